"""Celery tasks of the registry: webhook deliveries. A leaf: nothing imports it (deliveries are sent by
name, ``webhooks.DELIVER_TASK``)."""

from __future__ import annotations

import logging

import httpx
from celery import Task, shared_task
from django.conf import settings

from models_registry.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

logger = logging.getLogger(__name__)


class WebhookRejected(Exception):
    """The receiver answered with an error status; retried."""


@shared_task(
    name="models_registry.tasks.webhook_deliver",
    bind=True,
    autoretry_for=(httpx.HTTPError, WebhookRejected),
    retry_backoff=2,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=8,
)
def webhook_deliver(self: Task, url: str, event_type: str, body: str, delivery: str) -> int:
    """POST one signed event to ``url``; returns the receiver's status. Retried with exponential
    backoff (2 s, 4 s, ... up to 10 min, 8 times) when it fails or cannot be reached."""
    payload = body.encode()
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: event_type,
        DELIVERY_HEADER: delivery,
        "User-Agent": "rlhf-platform-webhooks",
    }
    if settings.REGISTRY_WEBHOOK_SECRET:
        headers[SIGNATURE_HEADER] = sign(payload, settings.REGISTRY_WEBHOOK_SECRET)
    response = httpx.post(url, content=payload, headers=headers, timeout=settings.REGISTRY_WEBHOOK_TIMEOUT_SECONDS)
    if response.status_code >= 400:
        logger.warning(
            "webhook %s to %s: HTTP %s (try %s)", event_type, url, response.status_code, self.request.retries
        )
        raise WebhookRejected(f"{url} answered HTTP {response.status_code}")
    return response.status_code
