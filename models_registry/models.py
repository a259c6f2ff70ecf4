"""Model versions: what was trained, where its files are, how it is served, which one is live and
which one is a canary; the canaries (``Canary``); and the append-only audit log of every change
(``DeploymentEvent``); and the webhooks' outbox (``WebhookDelivery``).

Statuses move only through ``models_registry.services``, along ``ModelVersion.TRANSITIONS``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from django.conf import settings
from django.db import models


class ModelVersion(models.Model):
    class Kind(models.TextChoices):
        POLICY = "policy", "Policy"
        REWARD = "reward", "Reward model"

    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        APPROVED = "approved", "Approved"
        CANARY = "canary", "Canary"
        LIVE = "live", "Live"
        RETIRED = "retired", "Retired"
        REJECTED = "rejected", "Rejected"

    class Backend(models.TextChoices):
        LOCAL = "local", "Local (transformers, in the server process)"
        OPENAI = "openai", "OpenAI-compatible server"

    # Who may move a version where. Rollback is retired -> live. A canary is promoted (canary -> live)
    # or stopped (canary -> approved). Candidate -> live skips approval and is for the system alone
    # (bootstrap and --base-model deploy what they have just registered).
    TRANSITIONS: ClassVar[Mapping[str, frozenset[str]]] = MappingProxyType(
        {
            Status.CANDIDATE: frozenset({Status.APPROVED, Status.REJECTED}),
            Status.APPROVED: frozenset({Status.LIVE, Status.CANARY, Status.REJECTED}),
            Status.CANARY: frozenset({Status.LIVE, Status.APPROVED}),
            Status.LIVE: frozenset({Status.RETIRED}),
            Status.RETIRED: frozenset({Status.LIVE, Status.REJECTED}),
            Status.REJECTED: frozenset(),
        }
    )
    SYSTEM_TRANSITIONS: ClassVar[Mapping[str, frozenset[str]]] = MappingProxyType(
        {Status.CANDIDATE: frozenset({Status.LIVE})}
    )
    # Rollback takes the retired version that went live last: a kind's live periods do not overlap,
    # so the last to start is the last to end.
    ROLLBACK_ORDER: ClassVar[list[Any]] = [models.F("deployed_at").desc(nulls_last=True), "-id"]

    kind = models.CharField(max_length=16, choices=Kind.choices)
    number = models.PositiveIntegerField()
    artifact_path = models.CharField(max_length=500, blank=True, help_text="Folder holding the saved model.")
    checksums = models.JSONField(
        default=dict, blank=True, help_text="sha256 of every file of the artifact, by path relative to its folder."
    )
    backend = models.CharField(max_length=16, choices=Backend.choices, default=Backend.LOCAL)
    base_url = models.CharField(
        max_length=500, blank=True, help_text="OpenAI-compatible server, e.g. http://127.0.0.1:8001 (openai backend)."
    )
    model_name = models.CharField(max_length=200, blank=True, help_text="Model name on that server (openai backend).")
    metrics = models.JSONField(default=dict, blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children", help_text="Trained from."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CANDIDATE)
    load_error = models.TextField(blank=True, help_text="Why serving could not load this version, the last time.")
    created_at = models.DateTimeField(auto_now_add=True)
    deployed_at = models.DateTimeField(null=True, blank=True, help_text="When it last became live.")
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="approved_model_versions",
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="requested_model_versions",
        help_text="Who asked for it (the training run's requester); under four-eyes they may not approve it.",
    )

    class Meta:
        ordering = ["kind", "-number"]
        permissions = [
            ("approve_modelversion", "Can approve and reject model versions"),
            ("deploy_modelversion", "Can deploy and roll back model versions"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["kind", "number"], name="model_version_unique_number"),
            models.UniqueConstraint(
                fields=["kind"], condition=models.Q(status="live"), name="model_version_one_live_per_kind"
            ),
            models.UniqueConstraint(
                fields=["kind"], condition=models.Q(status="canary"), name="model_version_one_canary_per_kind"
            ),
            models.CheckConstraint(
                condition=models.Q(backend="local") | (~models.Q(base_url="") & ~models.Q(model_name="")),
                name="model_version_openai_has_server",
                violation_error_message="An openai-backend version needs a base URL and a model name.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} v{self.number}"

    @property
    def label(self) -> str:
        """Stable label for metrics and logs, e.g. ``policy:3``."""
        return f"{self.kind}:{self.number}"

    def allowed_transitions(self, *, system: bool = False) -> frozenset[str]:
        allowed = self.TRANSITIONS[self.status]
        if system:
            allowed |= self.SYSTEM_TRANSITIONS.get(self.status, frozenset())
        return allowed


class Canary(models.Model):
    """A canary: an approved version serving ``share`` of the new conversations beside the live one
    (``baseline``), until it is promoted (it goes live) or stopped (it returns to approved, having
    failed its canary). Which arm a conversation got is stored on the conversation."""

    class Outcome(models.TextChoices):
        RUNNING = "running", "Running"
        PROMOTED = "promoted", "Promoted"
        STOPPED = "stopped", "Stopped"

    kind = models.CharField(max_length=16, choices=ModelVersion.Kind.choices)
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="canaries")
    baseline = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="+", help_text="The live version it was compared with."
    )
    share = models.FloatField(help_text="Share of new conversations it answers, between 0 and 1.")
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.RUNNING)
    started_at = models.DateTimeField(auto_now_add=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.TextField(blank=True, help_text="Why it started, and why it ended.")

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind"], condition=models.Q(outcome="running"), name="canary_one_running_per_kind"
            ),
            models.CheckConstraint(condition=models.Q(share__gt=0) & models.Q(share__lt=1), name="canary_share_0_1"),
        ]

    def __str__(self) -> str:
        return f"canary {self.version} at {self.share:.0%} ({self.outcome})"

    @property
    def running(self) -> bool:
        return self.outcome == self.Outcome.RUNNING


class DeploymentEvent(models.Model):
    """One change of a version: its registration (``from_status`` empty) or a status change.
    Append-only, written in the transaction that made the change. ``actor`` None means the system
    (training, bootstrap, the monitor's automatic rollback)."""

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="events")
    from_status = models.CharField(
        max_length=16, choices=ModelVersion.Status.choices, blank=True, help_text="Empty: the version was registered."
    )
    to_status = models.CharField(max_length=16, choices=ModelVersion.Status.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="model_deployment_events",
    )
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["version", "created_at"], name="deployment_event_version_at")]

    def __str__(self) -> str:
        return f"{self.version}: {self.from_status or 'registered'} -> {self.to_status}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ValueError("Deployment events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("Deployment events are append-only.")

    @property
    def actor_label(self) -> str:
        return self.actor.get_username() if self.actor_id and self.actor else "system"


class WebhookDelivery(models.Model):
    """One webhook to one receiver: the outbox row, written in the transaction of the change it
    announces (so a change is never committed without its notices, nor a notice sent for a change
    rolled back), delivered by a Celery task after the commit, and kept until ``REGISTRY_WEBHOOK_KEEP_DAYS``
    after it is delivered or given up. A notice whose task could not be queued (the broker was away)
    or was lost stays ``pending`` and is queued again by the sweep (``models_registry.webhooks``)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, help_text="X-RLHF-Delivery")
    url = models.TextField()
    event_type = models.CharField(max_length=64)
    body = models.TextField(help_text="The signed JSON body, as sent.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="When its task was last queued.")
    finished_at = models.DateTimeField(null=True, blank=True, help_text="Delivered or given up.")

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["status", "created_at"], name="webhook_delivery_status_at")]

    def __str__(self) -> str:
        return f"{self.event_type} to {self.url} ({self.status})"
