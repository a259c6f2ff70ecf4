from __future__ import annotations

from models_registry.exceptions import RegistryError


class ServingError(RegistryError):
    """The live policy cannot answer. ``message`` is safe to show to a user; details go to the log
    and, for a failed load, to the version's ``load_error``."""

    http_status = 503
    code = "serving_unavailable"
