"""Error pages: JSON under /api/ (the one error shape), Django's usual pages elsewhere."""

from django.http import HttpRequest, HttpResponse
from django.views import defaults

from rlhf_site.errors import json_not_found, json_server_error


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return json_not_found(request) if _is_api(request) else defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    return json_server_error(request) if _is_api(request) else defaults.server_error(request)
