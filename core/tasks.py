from __future__ import annotations

from celery import shared_task

from core.idempotency import idempotency_records_purge


@shared_task(name="core.tasks.purge_idempotency_keys")
def purge_idempotency_keys() -> int:
    """Forget idempotency keys older than IDEMPOTENCY_KEY_TTL_HOURS; returns how many went."""
    return idempotency_records_purge()
