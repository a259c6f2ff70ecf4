"""Rows every app shares."""

from __future__ import annotations

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class IdempotencyRecord(models.Model):
    """The first answer given to a request carrying an ``Idempotency-Key``, replayed on retries.

    The row is inserted before the work, in the work's transaction, and the unique (user, scope, key)
    index is the lock: a concurrent retry's insert waits for the first attempt's transaction, then
    finds its answer (or, if it rolled back, does the work itself)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    scope = models.CharField(max_length=64)
    fingerprint = models.CharField(max_length=64, help_text="sha256 of the request body.")
    status_code = models.PositiveSmallIntegerField()
    body = models.JSONField(encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "scope", "key"], name="core_idempotency_unique_key")]

    def __str__(self) -> str:
        return f"idempotency key {self.key!r} ({self.scope})"
