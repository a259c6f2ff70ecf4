"""Serializer pieces every API shares: unknown fields are errors, and JSON types are not coerced."""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any

from rest_framework import serializers

from core import jsonsafe

_SHARED_LOCK = threading.RLock()  # re-entered: a serializer's fields may hold one of these serializers


class FieldsOnceMixin:
    """For a serializer whose fields depend only on its class (declared fields, a ModelSerializer's
    Meta): its fields are built and bound once per class, to one instance kept for that, and every
    instance of the class uses them, in every thread. DRF builds (for a ModelSerializer, from the
    model) and deep-copies every field for each instance: on the feedback API that was a fifth of a
    rating's server CPU (py-spy; README, "Feedback API under load").

    Sharing is safe because a field keeps no state while it validates or represents a value (DRF's
    ``ListSerializer`` relies on that: one child serves every item); what a field reads from the
    serializers above it is the context and ``partial`` (its root's), so an instance that has either,
    or sits under a root that has, builds its own fields as DRF does."""

    @cached_property
    def fields(self) -> Any:
        if self.partial or self.context or getattr(self.root, "partial", False):  # type: ignore[attr-defined]
            return _own_fields(self)
        return type(self)._fields_owner().fields

    @classmethod
    def _fields_owner(cls) -> Any:
        owner = cls.__dict__.get("_shared_owner")  # this very class's: a subclass has its own fields
        if owner is None:
            with _SHARED_LOCK:
                owner = cls.__dict__.get("_shared_owner")
                if owner is None:
                    owner = cls()
                    owner.__dict__["fields"] = _own_fields(owner)
                    _bind_all(owner)  # nested serializers' fields too, before another thread sees them
                    cls._shared_owner = owner  # type: ignore[attr-defined]
        return owner


def _own_fields(serializer: Any) -> Any:
    """The fields DRF builds and binds for one serializer (``Serializer.fields``, bypassing the mixin)."""
    return serializers.Serializer.fields.func(serializer)  # type: ignore[attr-defined]


def _bind_all(serializer: Any) -> None:
    if isinstance(serializer, serializers.ListSerializer):
        _bind_all(serializer.child)
    elif isinstance(serializer, serializers.Serializer):
        for field in serializer.fields.values():
            if isinstance(field, serializers.BaseSerializer):
                _bind_all(field)


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
