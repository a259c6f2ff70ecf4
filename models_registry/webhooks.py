"""Signed webhooks: every ``DeploymentEvent`` and every monitor decision is POSTed as JSON to each URL
in ``REGISTRY_WEBHOOK_URLS``.

The body is signed with HMAC-SHA256 under ``REGISTRY_WEBHOOK_SECRET``; the signature goes in the
``X-RLHF-Signature: sha256=<hex>`` header, with the event type in ``X-RLHF-Event`` and a delivery id
in ``X-RLHF-Delivery``. Deliveries are Celery tasks (``models_registry.tasks.webhook_deliver``) sent
once the transaction that made the change commits, never from inside it; a receiver that fails or
cannot be reached is retried with exponential backoff.

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
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnreachable

from models_registry.models import DeploymentEvent, ModelVersion

logger = logging.getLogger(__name__)

DELIVER_TASK = "models_registry.tasks.webhook_deliver"
SIGNATURE_HEADER = "X-RLHF-Signature"
EVENT_HEADER = "X-RLHF-Event"
DELIVERY_HEADER = "X-RLHF-Delivery"


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(event_type: str, data: dict[str, Any]) -> bytes:
    envelope = {"type": event_type, "sent_at": timezone.now(), "data": data}
    return json.dumps(envelope, cls=DjangoJSONEncoder, sort_keys=True).encode()


def notify_on_commit(event_type: str, data: dict[str, Any]) -> None:
    """Queue one signed delivery per configured URL, after the current transaction commits (at once
    outside one). Does nothing when no URL is configured."""
    urls = list(settings.REGISTRY_WEBHOOK_URLS)
    if not urls:
        return
    body = encode(event_type, data).decode()

    def send() -> None:
        for url in urls:
            try:
                current_app.send_task(DELIVER_TASK, args=[url, event_type, body, str(uuid.uuid4())])
            except BrokerUnreachable:  # the change itself is committed; only its notice is lost
                logger.error("webhook %s to %s not sent: the broker is unreachable", event_type, url)

    transaction.on_commit(send)


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
