"""Model versions. Minimal for now: kind, number, artifact, status; the deployment state machine,
audit log and serving are built on top of this (see DESIGN.md)."""

from __future__ import annotations

from django.db import models


class ModelVersion(models.Model):
    class Kind(models.TextChoices):
        POLICY = "policy", "Policy"
        REWARD = "reward", "Reward model"

    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        APPROVED = "approved", "Approved"
        LIVE = "live", "Live"
        RETIRED = "retired", "Retired"
        REJECTED = "rejected", "Rejected"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    number = models.PositiveIntegerField()
    artifact_path = models.CharField(max_length=500, blank=True, help_text="Folder holding the saved model.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CANDIDATE)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["kind", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "number"], name="model_version_unique_number"),
            models.UniqueConstraint(
                fields=["kind"], condition=models.Q(status="live"), name="model_version_one_live_per_kind"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} v{self.number}"

    @property
    def label(self) -> str:
        """Stable label for metrics and logs, e.g. ``policy:3``."""
        return f"{self.kind}:{self.number}"
