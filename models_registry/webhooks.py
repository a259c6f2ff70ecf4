"""Signed webhooks: every ``DeploymentEvent`` and every monitor decision is POSTed as JSON to each URL
in ``REGISTRY_WEBHOOK_URLS``.

The body is signed with HMAC-SHA256 under ``REGISTRY_WEBHOOK_SECRET``; the signature goes in the
``X-RLHF-Signature: sha256=<hex>`` header, with the event type in ``X-RLHF-Event`` and a delivery id
in ``X-RLHF-Delivery``.

An outbox: each delivery is a ``WebhookDelivery`` row written in the transaction that made the
change; once it commits, a Celery task (``models_registry.tasks.webhook_send``) delivers the row,
retrying a receiver that fails or cannot be reached with exponential backoff, and marks it delivered
or, after its last try, failed. A row whose task could not be queued (the broker was away) or whose
task was lost is queued again by ``outbox_sweep`` (beat, every ``REGISTRY_WEBHOOK_SWEEP_SECONDS``).
Delivery is at least once: a receiver may see one ``X-RLHF-Delivery`` twice and should ignore the
second.

A receiver checks a delivery with::

    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    hmac.compare_digest(expected, request.headers["X-RLHF-Signature"])
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnreachable

from models_registry.models import DeploymentEvent, ModelVersion, WebhookDelivery

logger = logging.getLogger(__name__)

SEND_TASK = "models_registry.tasks.webhook_send"
SIGNATURE_HEADER = "X-RLHF-Signature"
EVENT_HEADER = "X-RLHF-Event"
DELIVERY_HEADER = "X-RLHF-Delivery"


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(event_type: str, data: dict[str, Any]) -> bytes:
    envelope = {"type": event_type, "sent_at": timezone.now(), "data": data}
    return json.dumps(envelope, cls=DjangoJSONEncoder, sort_keys=True).encode()


def notify_on_commit(event_type: str, data: dict[str, Any]) -> None:
    """Store one delivery per configured URL in the current transaction (the outbox), and queue their
    tasks once it commits (at once outside one). Does nothing when no URL is configured."""
    urls = list(settings.REGISTRY_WEBHOOK_URLS)
    if not urls:
        return
    body = encode(event_type, data).decode()
    deliveries = WebhookDelivery.objects.bulk_create(
        [WebhookDelivery(url=url, event_type=event_type, body=body) for url in urls]
    )
    ids = [delivery.pk for delivery in deliveries]
    transaction.on_commit(lambda: enqueue(ids))


def enqueue(ids: list[uuid.UUID]) -> int:
    """Queue a delivery task for each of these pending deliveries; returns how many were queued. With
    the broker away they stay pending, for the sweep to queue once it is back."""
    queued: list[uuid.UUID] = []
    for delivery_id in ids:
        try:
            current_app.send_task(SEND_TASK, args=[str(delivery_id)])
        except BrokerUnreachable:  # the change is committed, and its notices are kept
            kept = len(ids) - len(queued)
            logger.warning("%d webhook(s) kept in the outbox for later: the broker is unreachable", kept)
            break
        queued.append(delivery_id)
    if queued:
        WebhookDelivery.objects.filter(pk__in=queued).update(enqueued_at=timezone.now())
    return len(queued)


def deliveries_send_again(ids: list[uuid.UUID]) -> int:
    """Put these deliveries back to pending if they failed, and queue them once this commits (an
    operator, once a receiver is fixed); returns how many. Delivered ones, and pending ones (their
    task is still trying), are left alone. Stamped as queued at once, so the sweep does not queue
    them a second time meanwhile (with the broker away, the sweep takes them after
    ``REGISTRY_WEBHOOK_REQUEUE_AFTER_SECONDS``)."""
    with transaction.atomic():
        rows = WebhookDelivery.objects.filter(pk__in=ids, status=WebhookDelivery.Status.FAILED)
        picked = list(rows.values_list("id", flat=True))
        rows.update(status=WebhookDelivery.Status.PENDING, enqueued_at=timezone.now(), finished_at=None)
        transaction.on_commit(lambda: enqueue(picked))
    return len(picked)


def outbox_sweep() -> dict[str, int]:
    """Queue again the pending deliveries that have no task: never queued (the broker was away when
    their change committed) for ``REGISTRY_WEBHOOK_SWEEP_SECONDS``, or neither queued nor tried for
    ``REGISTRY_WEBHOOK_REQUEUE_AFTER_SECONDS``, longer than a retry waits (its task was lost); and
    delete the delivered and failed ones older than ``REGISTRY_WEBHOOK_KEEP_DAYS``."""
    now = timezone.now()
    never = Q(enqueued_at__isnull=True, created_at__lt=now - timedelta(seconds=settings.REGISTRY_WEBHOOK_SWEEP_SECONDS))
    lost = Q(enqueued_at__lt=now - timedelta(seconds=settings.REGISTRY_WEBHOOK_REQUEUE_AFTER_SECONDS))
    pending = WebhookDelivery.objects.filter(never | lost, status=WebhookDelivery.Status.PENDING)
    ids = list(pending.order_by("created_at").values_list("id", flat=True)[:1000])
    queued = enqueue(ids) if ids else 0
    old = now - timedelta(days=settings.REGISTRY_WEBHOOK_KEEP_DAYS)
    ended = WebhookDelivery.objects.filter(finished_at__lt=old).exclude(status=WebhookDelivery.Status.PENDING)
    purged, _ = ended.delete()
    if queued or purged:
        logger.info("webhook outbox: %d queued again, %d old deliveries deleted", queued, purged)
    return {"queued": queued, "purged": purged}


def deployment_event_payload(event: DeploymentEvent, version: ModelVersion) -> dict[str, Any]:
    return {
        "id": event.pk,
        "version": version.label,
        "version_id": version.pk,
        "kind": version.kind,
        "number": version.number,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "actor": event.actor.get_username() if event.actor_id and event.actor else "system",
        "reason": event.reason,
        "at": event.created_at,
    }
