"""Prometheus metrics of serving, exposed on /metrics with django-prometheus's registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

MODEL_LOAD_FAILURES = Counter(
    "rlhf_model_load_failures_total",
    "Times a server process failed to load a model version (the reason is in its load_error).",
    ["model_version"],
)
SERVING_LIVE_VERSION = Gauge(
    "rlhf_serving_live_version",
    "Number of the version this process serves, per kind (0: none).",
    ["kind"],
    multiprocess_mode="liveall",  # one series per process: a process stuck on an old version shows
)
