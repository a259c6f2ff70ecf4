"""Input and output shapes of the feedback API. Inputs check types and ranges; rules that need the
database (ownership, step range, tags) live in the services."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from core.serializers import FieldsOnceMixin, StrictSerializer, TextField, UUIDStringField
from feedback.models import Comparison, Conversation, Feedback, Message, MessageStep, UserSatisfaction


class FeedbackInputSerializer(FieldsOnceMixin, StrictSerializer):
    message_id = UUIDStringField()
    step_index = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=100_000)
    thumbs = serializers.ChoiceField(choices=Feedback.Thumbs.choices, required=False, allow_null=True)
    rating = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=5)
    comment = TextField(
        required=False, allow_blank=True, allow_null=True, max_length=settings.FEEDBACK_COMMENT_MAX_LENGTH
    )
    tags = serializers.ListField(
        child=TextField(max_length=64), required=False, max_length=20, help_text="From FEEDBACK_TAGS."
    )
    correction = TextField(
        required=False,
        allow_blank=True,
        allow_null=True,
        max_length=settings.FEEDBACK_CORRECTION_MAX_LENGTH,
        help_text="What the answer should have said (the whole answer; not with step_index).",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if not any(name in attrs for name in ("thumbs", "rating", "comment", "tags", "correction")):
            raise serializers.ValidationError("Send at least one of thumbs, rating, comment, tags or correction.")
        return attrs


class SatisfactionSerializer(FieldsOnceMixin, serializers.ModelSerializer):
    score = serializers.FloatField(allow_null=True, help_text="Mean feedback value in [0, 1].")
    mean_rating = serializers.FloatField(allow_null=True)

    class Meta:
        model = UserSatisfaction
        fields = ["score", "count", "thumbs_up", "thumbs_down", "ratings", "mean_rating"]


class FeedbackOutputSerializer(FieldsOnceMixin, serializers.ModelSerializer):
    message_id = serializers.UUIDField()
    step_index = serializers.IntegerField(source="step.index", allow_null=True, default=None)

    class Meta:
        model = Feedback
        fields = [
            "id", "message_id", "step_index", "thumbs", "rating", "comment", "tags", "correction", "created_at",
            "updated_at",
        ]  # fmt: skip


class FeedbackWriteOutputSerializer(FeedbackOutputSerializer):
    satisfaction = SatisfactionSerializer()

    class Meta(FeedbackOutputSerializer.Meta):
        fields = [*FeedbackOutputSerializer.Meta.fields, "satisfaction"]


class ComparisonInputSerializer(StrictSerializer):
    prompt_message_id = UUIDStringField(help_text="The user turn both answers reply to.")
    chosen_message_id = UUIDStringField()
    rejected_message_id = UUIDStringField()
    is_tie = serializers.BooleanField(required=False, default=False)


class ComparisonOutputSerializer(serializers.ModelSerializer):
    prompt_message_id = serializers.UUIDField(source="prompt_id")
    chosen_message_id = serializers.UUIDField(source="chosen_id")
    rejected_message_id = serializers.UUIDField(source="rejected_id")

    class Meta:
        model = Comparison
        fields = [
            "id", "prompt_message_id", "chosen_message_id", "rejected_message_id", "is_tie", "created_at", "updated_at"
        ]  # fmt: skip


class ConversationSerializer(serializers.ModelSerializer):
    message_count = serializers.IntegerField()

    class Meta:
        model = Conversation
        fields = ["id", "title", "created_at", "message_count"]


class StepSerializer(serializers.ModelSerializer):
    class Meta:
        model = MessageStep
        fields = ["index", "content"]


class MessageSerializer(serializers.ModelSerializer):
    parent_id = serializers.UUIDField(allow_null=True)
    model_version = serializers.CharField(source="model_version.label", allow_null=True, default=None)
    steps = StepSerializer(many=True)

    class Meta:
        model = Message
        fields = [
            "id", "role", "content", "parent_id", "status", "error", "model_version", "source", "external_model",
            "token_count", "time_to_first_token_ms", "duration_ms", "created_at", "steps",
        ]  # fmt: skip


class ExternalTurnInputSerializer(StrictSerializer):
    prompt = TextField(max_length=settings.CHAT_MAX_MESSAGE_CHARS, help_text="The user's message.")
    answer = TextField(
        max_length=settings.EXTERNAL_ANSWER_MAX_CHARS, help_text="What your model answered; cut into steps here."
    )
    model = TextField(max_length=200, help_text="Your model's name (free text); stored with the answer.")


class ExternalConversationInputSerializer(ExternalTurnInputSerializer):
    title = TextField(required=False, allow_blank=True, max_length=200)


class ExternalTurnOutputSerializer(serializers.Serializer):
    conversation_id = serializers.UUIDField(source="conversation.id")
    prompt = MessageSerializer()
    answer = MessageSerializer()
