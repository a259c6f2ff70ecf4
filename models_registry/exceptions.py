"""Errors raised by the registry. ``rlhf_site``'s handler maps them to the JSON error shape through
``http_status``, ``code``, ``message`` and ``fields``."""

from __future__ import annotations


class ServiceError(Exception):
    """What every app's service errors carry: a message for people, a stable code, per-field
    messages and an HTTP status. It lives in the lowest layer so ``feedback`` and ``training`` can
    derive their own errors from it without an upward import; each app still raises its own class."""

    http_status = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        if code:
            self.code = code


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
