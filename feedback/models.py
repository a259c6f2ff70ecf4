"""Conversations, their messages and steps, and what users said about them.

An assistant message's ``parent`` is the user turn it answers; regenerated answers are siblings with
the same parent. Rows that record what users said (feedback, comparisons) are written only through
``feedback.services``.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from models_registry.models import Canary, ModelVersion


class Conversation(models.Model):
    class Arm(models.TextChoices):
        LIVE = "live", "Live"
        CANARY = "canary", "Canary"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Which arm of a canary answers this conversation: drawn once, stored, so every server process
    # and every reload gives the same one (feedback.arms).
    canary = models.ForeignKey(Canary, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations")
    arm = models.CharField(max_length=8, choices=Arm.choices, blank=True, default="", db_default="")
    arm_assigned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"], name="conversation_user_recent")]

    def __str__(self) -> str:
        return self.title or f"Conversation {str(self.id)[:8]}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"
        SYSTEM = "system", "System"

    class Status(models.TextChoices):
        STREAMING = "streaming", "Streaming"
        COMPLETE = "complete", "Complete"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"

    class Source(models.TextChoices):
        PLATFORM = "platform", "Platform (a registry version)"
        EXTERNAL = "external", "External (generated elsewhere)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="children",
        help_text="For an answer: the user turn it answers. Regenerated answers share a parent.",
    )
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="messages"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    # An answer generated elsewhere and logged here (POST /api/assistant/conversations): it has no
    # registry version, so monitoring and per-version analytics never count it; ``external_model`` is
    # the free-text name its application gave.
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.PLATFORM, db_default="platform")
    external_model = models.CharField(max_length=200, blank=True, default="", db_default="")
    error = models.TextField(blank=True)
    token_count = models.PositiveIntegerField(null=True, blank=True)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # While an answer streams, its server process writes this every CHAT_HEARTBEAT_SECONDS; an answer
    # still streaming with no sign of life for CHAT_STALE_AFTER_SECONDS lost its process (killed,
    # restarted) and the reaper closes it (feedback.heartbeat.stale_answers_reap). Stamped by the
    # database's clock, from the row's insert on (db_default), so no server's clock is compared.
    heartbeat_at = models.DateTimeField(null=True, blank=True, db_default=Now())

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["conversation", "created_at"], name="message_conversation_order"),
            # Per-version analytics and the monitor read a version's answers by time.
            models.Index(fields=["model_version", "created_at"], name="message_version_time"),
            # The reaper's read: the few answers streaming now, among all answers ever.
            models.Index(fields=["created_at"], condition=Q(status="streaming"), name="message_streaming"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(source="platform") | Q(model_version__isnull=True), name="message_external_has_no_version"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"


class MessageStep(models.Model):
    """One step of an assistant answer (a numbered step or a paragraph); step feedback points here."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    content = models.TextField()

    class Meta:
        ordering = ["message", "index"]
        constraints = [models.UniqueConstraint(fields=["message", "index"], name="message_step_unique_index")]

    def __str__(self) -> str:
        return f"step {self.index}: {self.content[:60]}"


class Feedback(models.Model):
    class Thumbs(models.TextChoices):
        UP = "up", "Thumbs up"
        DOWN = "down", "Thumbs down"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="feedback")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    step = models.ForeignKey(MessageStep, null=True, blank=True, on_delete=models.CASCADE, related_name="feedback")
    thumbs = models.CharField(max_length=4, choices=Thumbs.choices, null=True, blank=True)  # noqa: DJ001 (null = no thumbs)
    rating = models.PositiveSmallIntegerField(null=True, blank=True)
    comment = models.TextField(blank=True, default="")
    tags = models.JSONField(default=list, blank=True)
    # What the answer should have said (message-level only): the processor makes it a preference pair
    # (the correction chosen over the answer) and a supervised row.
    correction = models.TextField(blank=True, default="", db_default="")
    # The version that wrote the rated answer, copied from it when the feedback is first given (an
    # answer's version never changes): per-version analytics and the monitor read one index range
    # instead of joining a million answers.
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+", editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        verbose_name_plural = "feedback"
        permissions = [("view_insights", "Can view feedback insights (across all users)")]
        constraints = [
            # NULL steps are distinct in a plain unique index, hence two partial ones.
            models.UniqueConstraint(
                fields=["user", "message"], condition=Q(step__isnull=True), name="feedback_one_per_message"
            ),
            models.UniqueConstraint(
                fields=["user", "message", "step"], condition=Q(step__isnull=False), name="feedback_one_per_step"
            ),
            models.CheckConstraint(
                condition=Q(rating__isnull=True) | Q(rating__gte=1, rating__lte=5), name="feedback_rating_1_to_5"
            ),
            models.CheckConstraint(
                condition=Q(thumbs__isnull=True) | Q(thumbs__in=["up", "down"]), name="feedback_thumbs_up_or_down"
            ),
            models.CheckConstraint(
                condition=Q(thumbs__isnull=False) | Q(rating__isnull=False) | ~Q(comment="") | ~Q(correction=""),
                name="feedback_says_something",
            ),
            models.CheckConstraint(condition=Q(step__isnull=True) | Q(correction=""), name="feedback_correction_whole"),
        ]
        indexes = [
            models.Index(fields=["user", "-updated_at"], name="feedback_user_recent"),
            models.Index(fields=["model_version", "created_at"], name="feedback_version_time"),
        ]

    def __str__(self) -> str:
        parts = [self.thumbs or "", f"{self.rating}/5" if self.rating else "", "comment" if self.comment else ""]
        return f"feedback {self.pk}: " + " ".join(p for p in parts if p)

    @property
    def value(self) -> float | None:
        """This feedback's contribution to satisfaction, in [0, 1]; None if it carries no score.

        Thumbs count 1 (up) or 0 (down); a rating r counts (r - 1) / 4; with both, their mean.
        """
        parts: list[float] = []
        if self.thumbs is not None:
            parts.append(1.0 if self.thumbs == self.Thumbs.UP else 0.0)
        if self.rating is not None:
            parts.append((self.rating - 1) / 4)
        return sum(parts) / len(parts) if parts else None


class Comparison(models.Model):
    """A side-by-side judgement between two answers to the same user turn."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="comparisons")
    prompt = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="comparisons_as_prompt")
    chosen = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="comparisons_chosen")
    rejected = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="comparisons_rejected")
    is_tie = models.BooleanField(default=False)
    pair_key = models.CharField(max_length=73, editable=False, help_text="The two answer ids, sorted.")
    # The versions that wrote the two answers, copied from them (as on Feedback): votes between
    # versions are read by these indexes, without joining the answers.
    chosen_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+", editable=False
    )
    rejected_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+", editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.UniqueConstraint(fields=["user", "pair_key"], name="comparison_one_per_pair"),
            models.CheckConstraint(condition=~Q(chosen=models.F("rejected")), name="comparison_two_answers"),
        ]

    def __str__(self) -> str:
        return f"comparison {self.pk}"


class UserSatisfaction(models.Model):
    """A running mean of the user's feedback values (see ``Feedback.value``), kept in step with the
    feedback rows in the same transaction."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="satisfaction"
    )
    count = models.PositiveIntegerField(default=0, help_text="Feedback rows that carry a score.")
    value_sum = models.FloatField(default=0.0)
    thumbs_up = models.PositiveIntegerField(default=0)
    thumbs_down = models.PositiveIntegerField(default=0)
    ratings = models.PositiveIntegerField(default=0)
    rating_sum = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "user satisfaction"
        constraints = [models.CheckConstraint(condition=Q(value_sum__gte=-1e-9), name="satisfaction_sum_positive")]

    def __str__(self) -> str:
        return f"satisfaction of user {self.user_id}"

    @property
    def score(self) -> float | None:
        """Mean feedback value in [0, 1], or None before any scored feedback."""
        if not self.count:
            return None
        return round(min(1.0, max(0.0, self.value_sum / self.count)), 4)

    @property
    def mean_rating(self) -> float | None:
        return round(self.rating_sum / self.ratings, 3) if self.ratings else None
