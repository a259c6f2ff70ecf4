"""Errors raised by the feedback services. ``rlhf_site``'s handler maps them to the JSON error shape
through ``http_status``, ``code``, ``message`` and ``fields``."""

from __future__ import annotations


class FeedbackError(Exception):
    http_status = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        if code:
            self.code = code


class NotFound(FeedbackError):
    """Missing, or someone else's: the two are indistinguishable on purpose."""

    http_status = 404
    code = "not_found"


class IdempotencyKeyReused(FeedbackError):
    http_status = 422
    code = "idempotency_key_reused"
