"""Errors raised by the feedback services. ``rlhf_site``'s handler maps them to the JSON error shape
through ``http_status``, ``code``, ``message`` and ``fields``."""

from __future__ import annotations

from core.exceptions import ServiceError


class FeedbackError(ServiceError):
    """What the feedback services raise."""


class NotFound(FeedbackError):
    """Missing, or someone else's: the two are indistinguishable on purpose."""

    http_status = 404
    code = "not_found"
