"""Errors raised by the registry. ``rlhf_site``'s handler maps them to the JSON error shape through
``http_status``, ``code``, ``message`` and ``fields``."""

from __future__ import annotations

from core.exceptions import ServiceError


class RegistryError(ServiceError):
    """What the registry services raise."""


class ChecksumMismatch(RegistryError):
    """An artifact's files are not the ones that were registered."""

    http_status = 409
    code = "checksum_mismatch"


class VersionNotFound(RegistryError):
    http_status = 404
    code = "not_found"


class InvalidTransition(RegistryError):
    """The version's status does not allow the change (``ModelVersion.TRANSITIONS``), or no longer
    does: someone else moved it first."""

    http_status = 409
    code = "invalid_transition"


class NothingToRollBackTo(RegistryError):
    http_status = 409
    code = "no_rollback_target"


class NotPermitted(RegistryError):
    http_status = 403
    code = "permission_denied"
