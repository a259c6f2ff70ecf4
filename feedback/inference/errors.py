"""The inference API's error, in OpenAI's shape."""

from __future__ import annotations

from typing import Any

from feedback.exceptions import FeedbackError


class InferenceError(FeedbackError):
    """An error of the inference API, shown to clients in OpenAI's shape: ``type`` and ``param``
    besides the message and code; ``retry_after`` (seconds) on a 429."""

    type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int = 400,
        param: str | None = None,
        type: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.http_status = status
        self.param = param
        self.retry_after = retry_after
        if type:
            self.type = type


def openai_error(exc: InferenceError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
