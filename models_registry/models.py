"""Model versions: what was trained, where its files are, how it is served, and which one is live.

The approve/deploy/rollback state machine and its audit log are built on top of this (see DESIGN.md);
for now ``models_registry.services`` registers versions and makes one live.
"""

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

    class Backend(models.TextChoices):
        LOCAL = "local", "Local (transformers, in the server process)"
        OPENAI = "openai", "OpenAI-compatible server"

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

    class Meta:
        ordering = ["kind", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "number"], name="model_version_unique_number"),
            models.UniqueConstraint(
                fields=["kind"], condition=models.Q(status="live"), name="model_version_one_live_per_kind"
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
