"""Admin of the training app: runs and dataset snapshots, improvement cycles, the monitor's decisions,
the lineage it adds to the registry's version pages, and the user admin whose deletes are erasures."""

from training.admin import cycles, lineage, monitor, runs, users  # noqa: F401  (each registers its admin classes)
