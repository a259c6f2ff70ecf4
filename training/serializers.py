"""Input and output shapes of the training API."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from core.serializers import JSONObjectField, StrictSerializer
from training.models import DatasetSnapshot, TrainingRun


class TrainingRunInputSerializer(StrictSerializer):
    kind = serializers.ChoiceField(choices=TrainingRun.Kind.choices)
    config = JSONObjectField(
        required=False,
        default=dict,
        help_text="Settings to override (epochs, learning_rate, batch_size, max_length, seed, ...); the rest default.",
    )


class DatasetSnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetSnapshot
        fields = [
            "id",
            "content_hash",
            "row_counts",
            "split",
            "source",
            "stats",
            "size_bytes",
            "created_at",
            "invalidated_at",
            "invalidated_reason",
        ]


class TrainingRunSerializer(serializers.ModelSerializer):
    dataset = DatasetSnapshotSerializer(read_only=True, allow_null=True)
    base_version = serializers.SerializerMethodField()
    reward_version = serializers.SerializerMethodField()
    output_version = serializers.SerializerMethodField()
    requested_by = serializers.SerializerMethodField()

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "kind",
            "status",
            "phase",
            "progress",
            "step",
            "total_steps",
            "config",
            "metrics",
            "error_message",
            "cancel_requested",
            "heartbeat_at",
            "created_at",
            "started_at",
            "finished_at",
            "dataset",
            "base_version",
            "reward_version",
            "output_version",
            "requested_by",
            "log_tail",
        ]

    def _label(self, version: Any) -> str | None:
        return version.label if version is not None else None

    def get_base_version(self, run: TrainingRun) -> str | None:
        return self._label(run.base_version)

    def get_reward_version(self, run: TrainingRun) -> str | None:
        return self._label(run.reward_version)

    def get_output_version(self, run: TrainingRun) -> str | None:
        return self._label(run.output_version)

    def get_requested_by(self, run: TrainingRun) -> str | None:
        return run.requested_by.get_username() if run.requested_by else None


class CycleInputSerializer(StrictSerializer):
    policy = serializers.ChoiceField(
        choices=["ppo", "dpo", "kto"], required=False, help_text="How the policy is trained; default CYCLE_POLICY_KIND."
    )
    config = JSONObjectField(
        required=False,
        default=dict,
        help_text='Settings of its runs to override: {"reward": {...}, "policy": {...}}; the rest default.',
    )
    trigger = serializers.ChoiceField(choices=["manual", "workflow"], required=False, default="manual")


class CycleSerializer(serializers.Serializer):
    """A cycle's report (``training.cycle.service.cycle_report``)."""

    id = serializers.IntegerField()
    policy_kind = serializers.CharField()
    trigger = serializers.CharField()
    status = serializers.CharField()
    stage = serializers.CharField()
    progress = serializers.FloatField()
    stages = serializers.ListField(child=serializers.DictField())
    gates = serializers.ListField(child=serializers.DictField())
    new_ratings = serializers.IntegerField()
    reward_run = serializers.DictField(allow_null=True)
    policy_run = serializers.DictField(allow_null=True)
    candidate = serializers.CharField(allow_null=True)
    canary = serializers.DictField(allow_null=True)
    reason = serializers.CharField()
    config = serializers.DictField()
    requested_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
