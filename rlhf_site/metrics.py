"""``/metrics`` for Prometheus, open only to METRICS_TOKEN bearers; with DEBUG on, also to
METRICS_ALLOWED_IPS. Outside DEBUG an address allow-list is not enough: behind a proxy on the same host
every request comes from loopback."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django_prometheus.exports import ExportToDjangoView
from prometheus_client import generate_latest

from core.errors import error_body
from training.metrics import DATABASE_REGISTRY


def _address_allowed(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for allowed in settings.METRICS_ALLOWED_IPS:
        try:
            if ip in ipaddress.ip_network(allowed, strict=False):
                return True
        except ValueError:
            continue
    return False


def _token_ok(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip(), token)


def metrics_view(request: HttpRequest) -> HttpResponse:
    by_address = settings.DEBUG and _address_allowed(request.META.get("REMOTE_ADDR", ""))
    if not (_token_ok(request) or by_address):
        message = "Metrics are not open to this client."
        if not settings.METRICS_TOKEN and not settings.DEBUG:
            message += " Set METRICS_TOKEN and scrape with 'Authorization: Bearer <token>'."
        return JsonResponse(error_body(403, "forbidden", message), status=403)
    response = ExportToDjangoView(request)
    # Both are Prometheus text format, which concatenates (no end marker, distinct metric names).
    response.content = response.content + generate_latest(DATABASE_REGISTRY)
    return response
