"""JSON parser with a body size limit, refusing what would fail later (``core.jsonsafe``).

DRF parsers read the request stream directly, which bypasses Django's DATA_UPLOAD_MAX_MEMORY_SIZE,
so the limit is enforced here before anything is decoded. The charset was vetted by
``rlhf_site.middleware.CharsetMiddleware`` before the view ran.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser

from core import jsonsafe


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "The request body is too large."


class LimitedJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict[str, Any] | None = None) -> Any:
        limit = settings.API_MAX_BODY_BYTES
        too_large = PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_large
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise too_large
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            return jsonsafe.loads(raw.decode(encoding))
        except (UnicodeError, LookupError):
            raise exceptions.ParseError(f"The request body is not valid {encoding} text.") from None
        except jsonsafe.UnsafeJSON as exc:
            raise exceptions.ParseError(f"The request body {exc}.") from None
