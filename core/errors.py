"""The one JSON error shape of the API and its OpenAPI description.

Every error the API returns looks like::

    {"error": {"status": 400, "code": "invalid", "message": "Rating must be between 1 and 5.",
               "fields": {"rating": ["Ensure this value is less than or equal to 5."]}}}

``fields`` is present (possibly empty) on every error so clients need no special case. The handler
that produces it from exceptions is ``rlhf_site.errors.api_exception_handler``.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers


def error_body(http_status: int, code: str, message: str, fields: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {"error": {"status": http_status, "code": code, "message": message, "fields": fields or {}}}


ErrorSerializer = inline_serializer(
    "Error",
    fields={
        "error": inline_serializer(
            "ErrorBody",
            fields={
                "status": serializers.IntegerField(),
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "fields": serializers.DictField(child=serializers.ListField(child=serializers.CharField())),
            },
        )
    },
)


def error_responses(extra: dict[int, str] | None = None) -> dict[int, OpenApiResponse]:
    """``{status: OpenApiResponse(Error)}`` for ``extend_schema(responses=...)``: the common errors
    plus ``extra`` ones, e.g. ``{403: "Missing permission."}``."""
    common = {
        400: "Invalid input (field errors in `fields`).",
        401: "Not authenticated.",
        404: "Not found, or not yours.",
        413: "Body too large.",
        415: "Not JSON.",
        422: "Idempotency-Key reused with another body.",
        429: "Throttled; see Retry-After.",
        503: "The database cannot be reached; nothing was changed. See Retry-After.",
    }
    common.update(extra or {})
    return {code: OpenApiResponse(ErrorSerializer, description=text) for code, text in sorted(common.items())}


ERRORS = error_responses()
IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Makes a retry safe: the same key from the same user replays the first answer and writes nothing.",
)
