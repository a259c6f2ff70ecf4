"""What a model was trained on (``DatasetSnapshot``) and the job that trained it (``TrainingRun``).

A snapshot row is written only once its files are complete; its ``content_hash`` covers every file,
and ``source`` names the feedback and comparison id ranges it read, so a model version traces back
through its run to the exact rows. A run is a long job with state, progress, a heartbeat and a log
tail; its allowed status changes are ``TrainingRun.TRANSITIONS`` and only ``training.services``
changes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q

from models_registry.models import Canary, ModelVersion


class DatasetSnapshot(models.Model):
    """One build of the feedback processor: four datasets (preference pairs, unpaired examples,
    step-labelled examples, prompts), each split into train and test, as JSON Lines under ``path``."""

    path = models.CharField(max_length=500, help_text="Folder holding <dataset>/{train,test}.jsonl and manifest.json.")
    content_hash = models.CharField(max_length=64, help_text="sha256 over every file of the snapshot.")
    row_counts = models.JSONField(default=dict, help_text='{"preference": {"train": n, "test": m}, ...}')
    split = models.JSONField(default=dict, help_text="Seed, test fraction and unit (conversation) of the split.")
    source = models.JSONField(default=dict, help_text="Feedback and comparison id ranges and row counts read.")
    options = models.JSONField(default=dict, help_text="Processor options (rating thresholds, ...).")
    stats = models.JSONField(default=dict, help_text="Dropped ties, conflicts, duplicates, scrubbed values, ...")
    size_bytes = models.PositiveBigIntegerField(default=0)
    build_seconds = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when a user whose rows it holds is erased (training.erasure): its files are removed and no
    # run trains on it again. The row stays, so the runs and versions made from it keep their lineage.
    invalidated_at = models.DateTimeField(null=True, blank=True)
    invalidated_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"dataset {self.pk} ({self.content_hash[:12]})"

    @property
    def is_invalidated(self) -> bool:
        return self.invalidated_at is not None

    def rows(self, dataset: str, split: str) -> int:
        return int(self.row_counts.get(dataset, {}).get(split, 0))


class TrainingRun(models.Model):
    class Kind(models.TextChoices):
        REWARD = "reward", "Reward model"
        PPO = "ppo", "PPO (policy)"
        DPO = "dpo", "DPO (policy)"
        KTO = "kto", "KTO (policy)"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    # status -> statuses it may move to; the rest are final. Read-only: only ``training.services``'s
    # ``_transition`` changes a status, and only along this table.
    TRANSITIONS: ClassVar[Mapping[str, frozenset[str]]] = MappingProxyType(
        {
            Status.QUEUED: frozenset({Status.RUNNING, Status.FAILED, Status.CANCELLED}),
            Status.RUNNING: frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}),
        }
    )
    ACTIVE = (Status.QUEUED, Status.RUNNING)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    config = models.JSONField(default=dict, help_text="Validated settings, defaults filled in.")
    phase = models.CharField(max_length=32, blank=True, help_text="What the worker is doing now.")
    progress = models.FloatField(default=0.0, help_text="0 to 1.")
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True)
    log_tail = models.TextField(blank=True)
    error = models.TextField(blank=True, help_text="Technical detail (exception and traceback).")
    error_message = models.TextField(blank=True, help_text="What went wrong, for a person.")
    cancel_requested = models.BooleanField(default=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the worker that claimed it.")
    task_id = models.CharField(max_length=64, blank=True)
    dataset = models.ForeignKey(
        DatasetSnapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="training_runs"
    )
    base_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+", help_text="Started from."
    )
    reward_version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The reward model that scores a policy run (PPO's rollouts).",
    )
    judge_version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The reward model that evaluates a policy it produced: the live one, which (in a cycle) did not"
        " train it.",
    )
    output_version = models.OneToOneField(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="training_run",
        help_text="The candidate it registered.",
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("start_trainingrun", "Can start and cancel training runs")]
        constraints = [
            models.CheckConstraint(condition=Q(progress__gte=0) & Q(progress__lte=1), name="training_run_progress_0_1"),
            models.CheckConstraint(
                condition=~Q(status="succeeded") | Q(output_version__isnull=False),
                name="training_run_succeeded_has_version",
            ),
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="training_run_status_heartbeat")]

    def __str__(self) -> str:
        return f"{self.kind} run {self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def output_kind(self) -> str:
        return ModelVersion.Kind.REWARD if self.kind == self.Kind.REWARD else ModelVersion.Kind.POLICY


class MonitorDecision(models.Model):
    """One decision of the monitor about a version against its baseline: a canary against the live
    version on the same days, or a directly deployed version against the one it replaced. Every pass
    stores one per watched version; an automatic promote, stop or rollback also writes the registry's
    ``DeploymentEvent`` with the figures."""

    class Decision(models.TextChoices):
        NOT_ENOUGH_DATA = "not_enough_data", "Not enough data"
        CONTINUE = "continue", "Continue"
        PROMOTE = "promote", "Promote"
        STOP = "stop", "Stop the canary"
        KEEP = "keep", "Keep"
        ROLLBACK = "rollback", "Roll back"

    class Mode(models.TextChoices):
        CANARY = "canary", "Canary against live"
        DEPLOY = "deploy", "Deploy against the version it replaced"

    FINAL = frozenset({Decision.PROMOTE, Decision.STOP, Decision.KEEP, Decision.ROLLBACK})

    kind = models.CharField(max_length=16, choices=ModelVersion.Kind.choices)
    mode = models.CharField(max_length=16, choices=Mode.choices)
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="monitor_decisions")
    baseline = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    canary = models.ForeignKey(Canary, null=True, blank=True, on_delete=models.PROTECT, related_name="decisions")
    deployed_at = models.DateTimeField(null=True, blank=True, help_text="Deploy mode: the deployment watched.")
    decision = models.CharField(max_length=16, choices=Decision.choices)
    reason = models.TextField()
    version_positive = models.PositiveIntegerField()
    version_rated = models.PositiveIntegerField()
    baseline_positive = models.PositiveIntegerField()
    baseline_rated = models.PositiveIntegerField()
    votes_won = models.PositiveIntegerField(default=0)
    votes_lost = models.PositiveIntegerField(default=0)
    votes_tied = models.PositiveIntegerField(default=0)
    figures = models.JSONField(
        default=dict, help_text="Rates with Wilson intervals, the always-valid sequences, settings, ratings needed."
    )
    acted = models.BooleanField(default=False, help_text="The registry change the decision calls for was made.")
    error = models.TextField(blank=True, help_text="Why the change it called for could not be made.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["version", "-created_at"], name="monitor_decision_version"),
            models.Index(fields=["kind", "-created_at"], name="monitor_decision_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.get_decision_display()}: {self.version} vs {self.baseline}"

    @property
    def final(self) -> bool:
        return self.decision in self.FINAL


class Cycle(models.Model):
    """One turn of the improvement cycle: feedback -> reward model -> policy -> gates -> candidate ->
    approval -> canary -> the monitor's decision. Its stages run as ``TrainingRun``s (claimed, with
    progress, heartbeats, cancel and the reaper) on one dataset snapshot; ``training.cycle`` moves it
    from stage to stage. At most one cycle is active at a time (they all produce the policy)."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        AWAITING_APPROVAL = "awaiting_approval", "Awaiting approval"
        CANARY = "canary", "In canary"
        PROMOTED = "promoted", "Promoted"
        STOPPED = "stopped", "Canary stopped"
        NOT_DEPLOYED = "not_deployed", "Not deployed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "An operator"
        SCHEDULE = "schedule", "The schedule"
        FEEDBACK = "feedback", "New feedback"
        WORKFLOW = "workflow", "A CI workflow"

    class Stage(models.TextChoices):
        FEEDBACK = "feedback", "Check for new feedback"
        REWARD = "reward", "Train the reward model"
        POLICY = "policy", "Train the policy"
        GATES = "gates", "Gates"
        APPROVAL = "approval", "Approval"
        CANARY = "canary", "Canary, watched by the monitor"
        DONE = "done", "Done"

    ACTIVE = (Status.RUNNING, Status.AWAITING_APPROVAL, Status.CANARY)
    POLICY_KINDS = ("ppo", "dpo", "kto")

    policy_kind = models.CharField(max_length=8, choices=[(k, k.upper()) for k in POLICY_KINDS], default="ppo")
    target = models.CharField(max_length=16, default=ModelVersion.Kind.POLICY, editable=False)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    stage = models.CharField(max_length=16, choices=Stage.choices, default=Stage.FEEDBACK)
    config = models.JSONField(default=dict, help_text="Training configs of its runs and the gates' thresholds.")
    stages = models.JSONField(default=list, help_text="Each stage: name, status, started_at, finished_at, detail.")
    gates = models.JSONField(default=list, help_text="Each gate: name, figure, threshold, passed, detail.")
    reward_run = models.OneToOneField(
        TrainingRun, null=True, blank=True, on_delete=models.PROTECT, related_name="cycle_as_reward"
    )
    policy_run = models.OneToOneField(
        TrainingRun, null=True, blank=True, on_delete=models.PROTECT, related_name="cycle_as_policy"
    )
    candidate = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+", help_text="The policy."
    )
    canary = models.ForeignKey(Canary, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    new_ratings = models.PositiveIntegerField(default=0, help_text="Ratings given since the previous cycle.")
    feedback_from = models.DateTimeField(null=True, blank=True, help_text="Where new feedback was counted from.")
    reason = models.TextField(blank=True, help_text="How it ended, for a person.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="cycles"
    )
    cancel_requested = models.BooleanField(default=False)
    trained_by = models.CharField(
        max_length=200,
        blank=True,
        help_text="The process that trains its runs (manage.py rlhf_cycle --here, e.g. a GPU runner); empty: the"
        " training workers.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("start_cycle", "Can start and cancel improvement cycles")]
        constraints = [
            models.UniqueConstraint(
                fields=["target"],
                condition=Q(status__in=["running", "awaiting_approval", "canary"]),
                name="cycle_one_active_per_target",
            )
        ]

    def __str__(self) -> str:
        return f"cycle {self.pk} ({self.policy_kind})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE


class UserErasure(models.Model):
    """The proof that a user was erased (``manage.py forget_user``, the admin's delete, or any delete of
    the user), without personal data: a keyed hash of the user id (``training.erasure.erasure_subject``),
    how many rows of each kind went, and the dataset snapshots that held their rows. Append-only."""

    class Source(models.TextChoices):
        COMMAND = "command", "manage.py forget_user"
        ADMIN = "admin", "Admin"
        DELETE = "delete", "A delete of the user elsewhere (ORM, shell)"

    subject = models.CharField(max_length=64, db_index=True, help_text="HMAC-SHA256 of the user id (SECRET_KEY).")
    source = models.CharField(max_length=16, choices=Source.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The operator who erased them (admin).",
    )
    counts = models.JSONField(default=dict, help_text="Rows removed (or unlinked) by kind.")
    snapshots = models.ManyToManyField(
        DatasetSnapshot, blank=True, related_name="erasures", help_text="Dataset snapshots that held their rows."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"erasure {self.pk} ({self.subject[:12]})"
