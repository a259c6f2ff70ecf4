"""Errors raised by the training services. ``rlhf_site``'s handler maps them to the JSON error shape
through ``http_status``, ``code``, ``message`` and ``fields``."""

from __future__ import annotations

from core.exceptions import ServiceError


class TrainingError(ServiceError):
    """What the training services raise."""


class RunNotFound(TrainingError):
    http_status = 404
    code = "not_found"


class RunConflict(TrainingError):
    """The run is not in a state that allows this (e.g. cancelling a finished run)."""

    http_status = 409
    code = "conflict"


class DatasetInvalidated(TrainingError):
    """The dataset snapshot was invalidated (a user whose rows it held was erased): no run trains on it."""

    http_status = 409
    code = "dataset_invalidated"


class RunCancelled(Exception):
    """Raised inside a worker when an operator cancelled the run; unwinds to the task, which records it."""


class RunFailure(Exception):
    """A run cannot go on for a reason a person can act on (too little data, no live model, ...).
    ``message`` is stored on the run as its readable error."""

    def __init__(self, message: str, *, code: str = "failed"):
        super().__init__(message)
        self.message = message
        self.code = code
