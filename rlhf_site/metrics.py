"""``/metrics`` for Prometheus, open only to METRICS_TOKEN bearers; with DEBUG on, also to
METRICS_ALLOWED_IPS. Outside DEBUG an address allow-list is not enough: behind a proxy on the same host
every request comes from loopback.

With several server processes (``PROMETHEUS_MULTIPROC_DIR``), the page adds up the files every
process writes there. A process that died (uvicorn replaces it) leaves its files: its counters and
histograms rightly stay in the totals, but its gauges of the moment (``liveall``, ``livesum``) must
not, so each scrape first forgets the live gauges of processes no longer running (as
``prometheus_client.multiprocess.mark_process_dead`` does). A new process given a dead one's pid
before a scrape forgets its files takes over its gauges' values (prometheus_client reopens the
files): a limit of the library, and rare (the kernel reuses a pid only once it has wrapped around)."""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django_prometheus.exports import ExportToDjangoView
from prometheus_client import generate_latest

from core.errors import error_body
from training.metrics import DATABASE_REGISTRY

_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


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


def forget_dead_processes(path: str) -> list[int]:
    """Remove the live gauges' files of processes that no longer run from the multiprocess folder
    ``path``; returns their pids. The folder belongs to this machine's (this PID namespace's)
    processes, so its pids are theirs (README: one folder per machine, never shared by containers).
    What ``prometheus_client.multiprocess.mark_process_dead`` does, but tolerant of two scrapes at
    once removing the same file."""
    dead: dict[int, list[str]] = {}
    for name in os.listdir(path):
        match = _LIVE_GAUGE_FILE.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.setdefault(pid, []).append(name)
        except PermissionError:  # alive, another user's
            continue
    for names in dead.values():
        for name in names:
            (Path(path) / name).unlink(missing_ok=True)
    return sorted(dead)


def metrics_view(request: HttpRequest) -> HttpResponse:
    by_address = settings.DEBUG and _address_allowed(request.META.get("REMOTE_ADDR", ""))
    if not (_token_ok(request) or by_address):
        message = "Metrics are not open to this client."
        if not settings.METRICS_TOKEN and not settings.DEBUG:
            message += " Set METRICS_TOKEN and scrape with 'Authorization: Bearer <token>'."
        return JsonResponse(error_body(403, "forbidden", message), status=403)
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        forget_dead_processes(folder)
    response = ExportToDjangoView(request)
    # Both are Prometheus text format, which concatenates (no end marker, distinct metric names).
    response.content = response.content + generate_latest(DATABASE_REGISTRY)
    return response
