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
