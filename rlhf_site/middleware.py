"""Request middleware of the site."""

from __future__ import annotations

import codecs
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.http import parse_header_parameters

from core.errors import error_body

# Charsets a body or query string may declare. Django decodes form fields and query strings with the
# declared charset, and some of Python's codecs are not text encodings at all (rot13: a 500) or turn
# plain ASCII into lone surrogates that nothing downstream can store or encode (utf-7, unicode_escape,
# punycode). These cannot.
ALLOWED_CHARSETS = frozenset(
    {"utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "ascii", "iso8859-1", "cp1252"}
)


def charset_problem(content_type: str) -> str | None:
    """Why the charset of ``content_type`` (a Content-Type header) is refused, or None."""
    _, params = parse_header_parameters(content_type)
    charset = params.get("charset")
    if charset is None:
        return None
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        name = None
    if name not in ALLOWED_CHARSETS:
        return f"The charset {charset[:40]!r} is not supported; send UTF-8."
    return None


class CharsetMiddleware:
    """Refuses, with a 415 in the one error shape, a request whose Content-Type declares a charset
    outside ``ALLOWED_CHARSETS``, before anything (CSRF, a form, a parser) decodes it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = charset_problem(request.META.get("CONTENT_TYPE", ""))
        if problem is not None:
            return JsonResponse(error_body(415, "unsupported_charset", problem), status=415)
        return self.get_response(request)
