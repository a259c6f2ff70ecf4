"""The handler that turns every API error into the one JSON error shape (``core.errors``).

Apps never import this module: they raise exceptions derived from ``core.exceptions.ServiceError``
(``code``, ``message``, ``fields``, ``http_status``), Django's ``ValidationError``, ``Http404`` or DRF
exceptions.

A database that cannot be reached (Django's ``OperationalError`` or ``InterfaceError``: no connection
within the pool timeout, a connection cut mid-request) is a 503 with ``Retry-After``, not a 500: the
request changed nothing it answered for, and trying again shortly is the right thing to do.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from django.views.debug import SafeExceptionReporterFilter
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from core.errors import error_body
from core.exceptions import ServiceError

logger = logging.getLogger(__name__)


def _flatten(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        return [f"{key}: {msg}" for key, value in detail.items() for msg in _flatten(value)]
    if isinstance(detail, list | tuple):
        return [msg for item in detail for msg in _flatten(item)]
    return [str(detail)]


def _fields(detail: dict[str, Any]) -> dict[str, list[str]]:
    return {str(name): _flatten(value) for name, value in detail.items()}


def _first_code(detail: Any, default: str) -> str:
    if isinstance(detail, exceptions.ErrorDetail):
        return detail.code or default
    if isinstance(detail, dict):
        return next((_first_code(value, default) for value in detail.values()), default)
    if isinstance(detail, list) and detail:
        return _first_code(detail[0], default)
    return default


def _from_validation(detail: Any) -> tuple[str, str, dict[str, list[str]]]:
    if isinstance(detail, dict):
        detail = dict(detail)
        general = _flatten(detail.pop("non_field_errors", []))
        fields = _fields(detail)
        if general:
            message = " ".join(general)
        elif len(fields) == 1:
            (name, messages), *_ = fields.items()
            message = f"{name}: {messages[0]}"
        else:
            message = "Invalid input: " + ", ".join(sorted(fields)) + "."
        code = _first_code(detail, "invalid") if fields else "invalid"
        return code, message, fields
    messages = _flatten(detail)
    return _first_code(detail, "invalid"), " ".join(messages) or "Invalid input.", {}


DATABASE_ERRORS = (OperationalError, InterfaceError)
# What a 503 tells the client to wait: the pool gives up one reconnection after a few seconds and
# the next request tries again (rlhf_site.dbconfig).
RETRY_AFTER_SECONDS = 5
DATABASE_UNAVAILABLE = "The database cannot be reached right now; nothing was changed. Try again shortly."


def database_unavailable(exc: BaseException) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of the 503 for a database error ``exc`` (logged as a warning, without
    the traceback an outage would repeat for every request)."""
    logger.warning("Database unavailable: %s: %s", type(exc).__name__, str(exc).strip()[:300])
    return error_body(503, "database_unavailable", DATABASE_UNAVAILABLE), {"Retry-After": str(RETRY_AFTER_SECONDS)}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DATABASE_ERRORS):
        body, headers = database_unavailable(exc)
        return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers=headers)
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, ServiceError):
        return Response(error_body(exc.http_status, exc.code, exc.message, exc.fields), status=exc.http_status)

    response = exception_handler(exc, context)
    if response is None:
        return None
    assert isinstance(exc, exceptions.APIException)
    if isinstance(exc, exceptions.ValidationError):
        code, message, fields = _from_validation(exc.detail)
    else:
        detail = exc.detail
        code = detail.code if isinstance(detail, exceptions.ErrorDetail) and detail.code else exc.default_code
        message, fields = " ".join(_flatten(detail)), {}
    response.data = error_body(response.status_code, str(code), message, fields)
    return response


def json_not_found(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body(404, "not_found", "Not found."), status=404)


def json_server_error(request: HttpRequest) -> JsonResponse:
    # Django calls the 500 handler inside its ``except`` block, so the error is still at hand: one
    # raised outside DRF (a middleware's query, a page) gets the same 503 as one raised inside it.
    if isinstance(exc := sys.exc_info()[1], DATABASE_ERRORS):
        body, headers = database_unavailable(exc)
        return JsonResponse(body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers=headers)
    return JsonResponse(
        error_body(500, "server_error", "Something went wrong on our side; it has been logged."),
        status=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )


# scheme://user:password@ (user may be empty, as in redis://:password@host).
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<password>[^@\s/]+)@")
MASK = SafeExceptionReporterFilter.cleansed_substitute


def mask_url_credentials(value: Any) -> Any:
    """``value`` with the password of every URL in it replaced, recursively through dicts, lists and
    tuples; anything else is returned as it is."""
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(lambda m: f"{m['head']}:{MASK}@", value)
    if isinstance(value, dict):
        return {key: mask_url_credentials(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_url_credentials(item) for item in value)
    return value


class CredentialMaskingFilter(SafeExceptionReporterFilter):
    """Django's filter, which hides settings named like secrets, plus: a password inside any URL
    (``DATABASE_URL``, ``REDIS_URL``, ``CELERY_BROKER_URL``, cache and channel-layer locations) is
    masked wherever the debug page or an error e-mail would show it: settings, request META and the
    local variables of each frame."""

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        return mask_url_credentials(super().cleanse_setting(key, value))

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> Any:
        return [
            (name, mask_url_credentials(value))
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]
