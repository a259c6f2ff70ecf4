"""Admin of the training app: runs and dataset snapshots, improvement cycles, the monitor's decisions,
and the lineage it adds to the registry's version pages."""

from training.admin import cycles, lineage, monitor, runs  # noqa: F401  (each registers its admin classes)
