"""System checks of the platform's own settings (``manage.py check --deploy``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register


@register(Tags.security, deploy=True)
def generated_secret_key(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    if not settings.SECRET_KEY_GENERATED:
        return []
    return [
        Warning(
            "SECRET_KEY was generated into VAR_DIR/secret_key on this machine.",
            hint="Set SECRET_KEY (or SECRET_KEY_FILE) so that every server process and machine shares one key.",
            id="rlhf_site.W001",
        )
    ]


@register(Tags.security, deploy=True)
def metrics_token(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    if settings.METRICS_TOKEN:
        return []
    return [
        Warning(
            "METRICS_TOKEN is not set: outside DEBUG, /metrics answers no one.",
            hint="Set METRICS_TOKEN (or METRICS_TOKEN_FILE) and give it to Prometheus as a bearer token.",
            id="rlhf_site.W002",
        )
    ]


@register(Tags.database)
def threads_fit_the_pool(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """HTTP_THREADS and ASYNC_DB_THREADS may each hold a pooled connection at once; past the pool's
    size a thread waits for one (DATABASE_POOL_TIMEOUT), then its request fails with a 503."""
    pool = (settings.DATABASES["default"].get("OPTIONS", {}).get("pool")) or None
    if not isinstance(pool, dict) or "max_size" not in pool:
        return []
    threads = settings.HTTP_THREADS + settings.ASYNC_DB_THREADS
    if threads <= pool["max_size"]:
        return []
    return [
        Warning(
            f"HTTP_THREADS + ASYNC_DB_THREADS is {threads}, above DATABASE_POOL_MAX_SIZE ({pool['max_size']}): "
            "under load a thread may wait for a connection and its request fail with a 503.",
            hint="Raise DATABASE_POOL_MAX_SIZE or lower the thread counts.",
            id="rlhf_site.W003",
        )
    ]
