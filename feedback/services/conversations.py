"""Conversations, and the turns the inference API stores from other clients' histories."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import transaction

from feedback.chat import user_turn_create
from feedback.exceptions import NotFound
from feedback.models import (
    Conversation,
    Message,
    MessageStep,
)
from feedback.steps import split_steps


@transaction.atomic
def conversation_create(*, user: User, title: str = "") -> Conversation:
    return Conversation.objects.create(user=user, title=title[:200])


@dataclass(frozen=True)
class ExternalTurn:
    conversation: Conversation
    prompt: Message
    answer: Message


@transaction.atomic
def external_turn_record(
    *, user: User, prompt: str, answer: str, model: str, conversation_id: uuid.UUID | None = None, title: str = ""
) -> ExternalTurn:
    """A user turn and the answer an application's own model gave it, logged so that its users'
    feedback lands here: in a new conversation, or in ``conversation_id`` (the user's own). The answer
    is cut into steps as a generated one is, marked external with the free-text ``model`` name and
    no registry version (so no version's monitoring or analytics counts it)."""
    if conversation_id is None:
        conversation = conversation_create(user=user, title=title)
    else:
        found = Conversation.objects.filter(id=conversation_id, user=user).first()
        if found is None:
            raise NotFound("Conversation not found.")
        conversation = found
    prompt_message = user_turn_create(conversation=conversation, content=prompt)
    answer_message = external_answer_create(prompt=prompt_message, content=answer, model=model)
    return ExternalTurn(conversation=conversation, prompt=prompt_message, answer=answer_message)


def external_answer_create(*, prompt: Message, content: str, model: str) -> Message:
    answer = Message.objects.create(
        conversation_id=prompt.conversation_id,
        role=Message.Role.ASSISTANT,
        parent=prompt,
        content=content,
        status=Message.Status.COMPLETE,
        source=Message.Source.EXTERNAL,
        external_model=model[:200],
    )
    MessageStep.objects.bulk_create(
        [MessageStep(message=answer, index=i, content=step) for i, step in enumerate(split_steps(content))]
    )
    return answer
