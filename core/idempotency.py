"""``Idempotency-Key``: a retried POST replays the first answer and writes nothing.

Guarantees: the same key from the same user with the same body replays the first status and body;
the same key with another body is refused (422); concurrent retries do the work once (the record's
unique index is the lock, see ``IdempotencyRecord``); a request that failed stored nothing, so its
retry does the work. Keys are forgotten after ``IDEMPOTENCY_KEY_TTL_HOURS``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils import timezone

from core.exceptions import IdempotencyKeyReused, ServiceError
from core.models import IdempotencyRecord

MAX_KEY_LENGTH = 255


def request_fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def idempotent(
    *,
    user: AbstractBaseUser | AnonymousUser,
    scope: str,
    key: str | None,
    payload: Any,
    call: Callable[[], tuple[int, dict[str, Any]]],
) -> tuple[int, dict[str, Any]]:
    """Run ``call`` once per (user, scope, key); a retry with the same key gets the first answer.

    The record is inserted first, in the same transaction as the work, so a retry racing the first
    attempt waits on the record's unique index and then replays its answer. ``payload`` (the request
    body) is fingerprinted only when a key is given."""
    if not key:
        return call()
    if len(key) > MAX_KEY_LENGTH:
        raise ServiceError(
            f"The Idempotency-Key header is longer than {MAX_KEY_LENGTH} characters.", code="invalid_header"
        )
    fingerprint = request_fingerprint(payload)
    with transaction.atomic():
        record, created = IdempotencyRecord.objects.get_or_create(
            user_id=user.pk, scope=scope, key=key, defaults={"fingerprint": fingerprint, "status_code": 0, "body": {}}
        )
        if not created:
            if record.fingerprint != fingerprint:
                raise IdempotencyKeyReused("This Idempotency-Key was already used with a different request body.")
            return record.status_code, record.body
        status_code, body = call()
        record.status_code, record.body = status_code, body
        record.save(update_fields=["status_code", "body"])
        return status_code, body


def idempotency_records_purge(*, older_than: timedelta | None = None) -> int:
    ttl = older_than or timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=timezone.now() - ttl).delete()
    return deleted
