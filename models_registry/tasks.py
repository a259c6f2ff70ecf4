"""Celery tasks of the registry: webhook deliveries from the outbox, and its sweep. A leaf: nothing
imports it (deliveries are sent by name, ``webhooks.SEND_TASK``)."""

from __future__ import annotations

import logging
import random

import httpx
from celery import Task, shared_task
from django.conf import settings
from django.db.models import F
from django.utils import timezone

from models_registry import webhooks
from models_registry.models import WebhookDelivery
from models_registry.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

logger = logging.getLogger(__name__)

MAX_RETRIES = 8  # 9 tries, 1-2 s, 2-4 s, ... 128-256 s apart: 4-9 minutes in all, plus the tries


class WebhookRejected(Exception):
    """The receiver answered with an error status; retried."""


def _post(url: str, event_type: str, body: str, delivery: str) -> int:
    """POST one signed event to ``url``; the receiver's status (raises for 4xx and 5xx)."""
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
        raise WebhookRejected(f"{url} answered HTTP {response.status_code}")
    return response.status_code


@shared_task(name=webhooks.SEND_TASK, bind=True, max_retries=MAX_RETRIES)
def webhook_send(self: Task, delivery_id: str) -> str:
    """Deliver one pending ``WebhookDelivery``; returns what became of it. A receiver that fails or
    cannot be reached is tried again with exponential backoff (2 s, 4 s, ... 256 s, each with jitter
    down to half), ``MAX_RETRIES`` times; then the delivery is stored ``failed`` with the last error,
    for an operator to send again from the admin. Each try stamps ``enqueued_at``, so the sweep takes
    only a delivery whose task has been silent for ``REGISTRY_WEBHOOK_REQUEUE_AFTER_SECONDS`` for
    lost. Any other error (a malformed URL) fails it at once. A delivery no longer pending (delivered
    by a second task the sweep queued, given up, deleted) is left alone."""
    delivery = WebhookDelivery.objects.filter(pk=delivery_id, status=WebhookDelivery.Status.PENDING).first()
    if delivery is None:
        return "skipped"
    try:
        _post(delivery.url, delivery.event_type, delivery.body, str(delivery.pk))
    except Exception as exc:
        error = (str(exc) or type(exc).__name__)[:500]
        retryable = isinstance(exc, httpx.HTTPError | WebhookRejected) and not isinstance(exc, httpx.InvalidURL)
        last = self.request.retries >= MAX_RETRIES or not retryable
        now = timezone.now()
        ended = {"status": WebhookDelivery.Status.FAILED, "finished_at": now} if last else {}
        WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookDelivery.Status.PENDING).update(
            attempts=F("attempts") + 1, last_error=error, enqueued_at=now, **ended
        )
        if not retryable:
            logger.exception("webhook %s to %s failed and will not be retried", delivery.event_type, delivery.url)
            return "failed"
        if last:
            kind, url, tries = delivery.event_type, delivery.url, MAX_RETRIES + 1
            logger.error("webhook %s to %s given up after %d tries: %s", kind, url, tries, error)
            return "failed"
        logger.warning("webhook %s to %s: %s (try %s)", delivery.event_type, delivery.url, error, self.request.retries)
        countdown = min(600, 2 * 2**self.request.retries)
        raise self.retry(exc=exc, countdown=random.randint(countdown // 2, countdown)) from exc
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=WebhookDelivery.Status.DELIVERED, attempts=F("attempts") + 1, last_error="", finished_at=timezone.now()
    )
    return "delivered"


@shared_task(name="models_registry.tasks.webhook_outbox_sweep")
def webhook_outbox_sweep() -> dict[str, int]:
    """``webhooks.outbox_sweep``: queue the pending deliveries that have no task, delete old ones."""
    return webhooks.outbox_sweep()


@shared_task(
    name="models_registry.tasks.webhook_deliver",
    bind=True,
    autoretry_for=(httpx.HTTPError, WebhookRejected),
    retry_backoff=2,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
)
def webhook_deliver(self: Task, url: str, event_type: str, body: str, delivery: str) -> int:
    """The delivery task before the outbox (no row): kept for tasks a broker still holds from then."""
    return _post(url, event_type, body, delivery)
