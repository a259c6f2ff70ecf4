"""The base of every app's service errors. ``rlhf_site``'s API handler turns each into the one JSON
error shape (``core.errors``) through ``http_status``, ``code``, ``message`` and ``fields``."""

from __future__ import annotations


class ServiceError(Exception):
    """What every app's service errors carry: a message for people, a stable code, per-field
    messages and an HTTP status. Apps derive their own errors from it and raise those."""

    http_status = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        if code:
            self.code = code


class IdempotencyKeyReused(ServiceError):
    http_status = 422
    code = "idempotency_key_reused"
