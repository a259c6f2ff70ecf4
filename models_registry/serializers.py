"""Input and output shapes of the registry API."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.serializers import JSONObjectField, StrictSerializer, TextField
from models_registry.extensions import version_sections
from models_registry.models import Canary, DeploymentEvent, ModelVersion


class ReasonInputSerializer(StrictSerializer):
    reason = TextField(required=False, allow_blank=True, default="", max_length=2000)


class RequiredReasonInputSerializer(StrictSerializer):
    reason = TextField(max_length=2000, help_text="Why: kept on the deployment event.")


class CanaryStartInputSerializer(StrictSerializer):
    share = serializers.FloatField(help_text="Share of new conversations it answers, e.g. 0.1 for 10%.")
    reason = TextField(required=False, allow_blank=True, default="", max_length=2000)

    def validate_share(self, value: float) -> float:
        if not 0 < value < 1:
            raise serializers.ValidationError("Must be between 0 and 1 (exclusive), e.g. 0.1 for 10%.")
        return value


class RegisterInputSerializer(StrictSerializer):
    kind = serializers.ChoiceField(choices=ModelVersion.Kind.choices, default=ModelVersion.Kind.POLICY)
    base_url = TextField(max_length=500, help_text="OpenAI-compatible server; its host must be allowed.")
    model_name = TextField(max_length=200)
    metrics = JSONObjectField(required=False, default=dict)
    reason = TextField(required=False, allow_blank=True, default="", max_length=2000)


def _label(version: ModelVersion | None) -> str | None:
    return version.label if version is not None else None


def _username(user: Any) -> str | None:
    return user.get_username() if user is not None else None


class CanarySerializer(serializers.ModelSerializer):
    version = serializers.CharField(source="version.label")
    baseline = serializers.CharField(source="baseline.label")
    started_by = serializers.SerializerMethodField()
    ended_by = serializers.SerializerMethodField()

    class Meta:
        model = Canary
        fields = ["id", "kind", "version", "baseline", "share", "outcome", "started_at", "started_by", "ended_at",
                  "ended_by", "reason"]  # fmt: skip

    def get_started_by(self, canary: Canary) -> str | None:
        return _username(canary.started_by)

    def get_ended_by(self, canary: Canary) -> str | None:
        return _username(canary.ended_by)


class DeploymentEventSerializer(serializers.ModelSerializer):
    version = serializers.CharField(source="version.label")
    actor = serializers.CharField(source="actor_label")

    class Meta:
        model = DeploymentEvent
        fields = ["id", "version", "from_status", "to_status", "actor", "reason", "created_at"]


class VersionSerializer(serializers.ModelSerializer):
    label = serializers.CharField()
    parent = serializers.SerializerMethodField()
    approved_by = serializers.SerializerMethodField()
    requested_by = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["id", "label", "kind", "number", "status", "backend", "base_url", "model_name", "artifact_path",
                  "metrics", "parent", "approved_by", "approved_at", "requested_by", "load_error", "created_at",
                  "deployed_at"]  # fmt: skip

    def get_parent(self, version: ModelVersion) -> str | None:
        return _label(version.parent)

    def get_approved_by(self, version: ModelVersion) -> str | None:
        return _username(version.approved_by)

    def get_requested_by(self, version: ModelVersion) -> str | None:
        return _username(version.requested_by)


class VersionDetailSerializer(VersionSerializer):
    events = serializers.SerializerMethodField()
    canaries = CanarySerializer(many=True)
    sections = serializers.SerializerMethodField(
        help_text="What other apps add: 'analytics' (how its answers were received), 'monitor_decisions'."
    )

    class Meta(VersionSerializer.Meta):
        fields = [*VersionSerializer.Meta.fields, "events", "canaries", "sections"]

    @extend_schema_field(DeploymentEventSerializer(many=True))
    def get_events(self, version: ModelVersion) -> Any:
        events = version.events.select_related("version", "actor").order_by("id")
        return DeploymentEventSerializer(events, many=True).data

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_sections(self, version: ModelVersion) -> dict[str, Any]:
        return {section.name: section.data(version) for section in version_sections(version)}
