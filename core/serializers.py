"""Serializer pieces every API shares: unknown fields are errors, and JSON types are not coerced."""

from __future__ import annotations

import copy
from typing import Any

from rest_framework import serializers

from core import jsonsafe


class FieldsOnceMixin:
    """For a serializer whose fields depend only on its class (declared fields, a ModelSerializer's
    Meta), not on its instance or context: the fields are built once per class and copied for each
    instance. DRF builds a ModelSerializer's fields from the model for every instance; on the feedback
    API that was a sixth of a rating's server CPU (py-spy; README, "Feedback API under load")."""

    def get_fields(self) -> dict[str, Any]:
        cls = type(self)
        built = cls.__dict__.get("_fields_once")  # this very class's: a subclass builds its own
        if built is None:
            built = super().get_fields()  # type: ignore[misc]
            cls._fields_once = built  # type: ignore[attr-defined]
        return copy.deepcopy(built)


class StrictSerializer(serializers.Serializer):
    """Rejects fields it does not know, so a typo is an error rather than silently ignored."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if isinstance(self.initial_data, dict):
            unknown = sorted(set(self.initial_data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return attrs


class UUIDStringField(serializers.UUIDField):
    """A UUID given as a string; DRF's own field would also take an integer as a UUID."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class TextField(serializers.CharField):
    """Text given as a JSON string; DRF's CharField would also turn a number into text."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class JSONObjectField(serializers.DictField):
    """A JSON object kept as it is (a jsonb column, a run's config): PostgreSQL refuses NUL in the
    keys and strings of jsonb, so it is a field error here rather than a failed insert later."""

    default_error_messages = {"nul": "Must not contain NUL characters (\\u0000); they cannot be stored."}

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if jsonsafe.holds_nul(value):
            self.fail("nul")
        return value
