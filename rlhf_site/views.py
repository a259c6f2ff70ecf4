"""Error pages: JSON under /api/ (the one error shape), Django's usual pages elsewhere."""

import sys

from django.http import HttpRequest, HttpResponse
from django.views import defaults

from rlhf_site.errors import DATABASE_ERRORS, RETRY_AFTER_SECONDS, json_not_found, json_server_error


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return json_not_found(request) if _is_api(request) else defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return json_server_error(request)
    if isinstance(sys.exc_info()[1], DATABASE_ERRORS):
        # A page cannot be built without the database: say so, and when to come back.
        response = HttpResponse(
            "The service is briefly unavailable (its database cannot be reached). Try again in a few seconds.",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    return defaults.server_error(request)
