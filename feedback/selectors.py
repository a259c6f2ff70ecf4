"""Reads, filtered to what the caller may see. Someone else's rows are simply absent (404, not 403)."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import User
from django.db.models import Count, QuerySet

from feedback.exceptions import NotFound
from feedback.models import Comparison, Conversation, Feedback, Message, UserSatisfaction


def feedback_list(*, user: User, message_id: uuid.UUID | None = None) -> QuerySet[Feedback]:
    queryset = Feedback.objects.filter(user=user).select_related("step").order_by("-updated_at", "-id")
    if message_id is not None:
        queryset = queryset.filter(message_id=message_id)
    return queryset


def feedback_get(*, user: User, feedback_id: int) -> Feedback:
    feedback = feedback_list(user=user).filter(id=feedback_id).first()
    if feedback is None:
        raise NotFound("Feedback not found.")
    return feedback


def conversation_list(*, user: User) -> QuerySet[Conversation]:
    return (
        Conversation.objects.filter(user=user).annotate(message_count=Count("messages")).order_by("-created_at", "-id")
    )


def conversation_get(*, user: User, conversation_id: uuid.UUID) -> Conversation:
    conversation = conversation_list(user=user).filter(id=conversation_id).first()
    if conversation is None:
        raise NotFound("Conversation not found.")
    return conversation


def conversation_messages(*, user: User, conversation_id: uuid.UUID) -> QuerySet[Message]:
    conversation = conversation_get(user=user, conversation_id=conversation_id)
    return (
        Message.objects.filter(conversation=conversation)
        .select_related("model_version")
        .prefetch_related("steps")
        .order_by("created_at", "id")
    )


def comparison_list(*, user: User) -> QuerySet[Comparison]:
    return Comparison.objects.filter(user=user).order_by("-updated_at", "-id")


def satisfaction_get(*, user: User) -> UserSatisfaction:
    return UserSatisfaction.objects.filter(user=user).first() or UserSatisfaction(user=user)
