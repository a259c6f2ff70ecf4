"""A user's comparison of two answers to one turn (``comparison_record``)."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import User
from django.db import transaction

from feedback import metrics
from feedback.exceptions import FeedbackError, NotFound
from feedback.models import (
    Comparison,
    Message,
)
from feedback.services.ratings import satisfaction_lock


@transaction.atomic
def comparison_record(
    *,
    user: User,
    prompt_id: uuid.UUID,
    chosen_id: uuid.UUID,
    rejected_id: uuid.UUID,
    is_tie: bool = False,
) -> tuple[Comparison, bool]:
    """Record (or change) which of two answers to the same user turn the user prefers."""
    if chosen_id == rejected_id:
        raise FeedbackError(
            "Chosen and rejected must be two different answers.",
            code="same_answer",
            fields={"rejected_message_id": ["Must differ from chosen_message_id."]},
        )
    found = {
        m.id: m for m in Message.objects.filter(id__in=[prompt_id, chosen_id, rejected_id], conversation__user=user)
    }
    if len(found) != 3:
        raise NotFound("Message not found.")
    prompt, chosen, rejected = found[prompt_id], found[chosen_id], found[rejected_id]
    if prompt.role != Message.Role.USER:
        raise FeedbackError(
            "The prompt must be a user message.",
            code="prompt_not_user_message",
            fields={"prompt_message_id": ["Must be the user turn both answers reply to."]},
        )
    wrong = [
        name
        for name, answer in (("chosen_message_id", chosen), ("rejected_message_id", rejected))
        if answer.role != Message.Role.ASSISTANT or answer.parent_id != prompt.id
    ]
    if wrong:
        raise FeedbackError(
            "Both answers must be assistant answers to the prompt.",
            code="not_an_answer_to_prompt",
            fields={name: ["Must be an assistant answer to prompt_message_id."] for name in wrong},
        )
    pair_key = "-".join(sorted([str(chosen_id), str(rejected_id)]))
    satisfaction_lock(user=user)  # serialise with the user's other writes; see the module docstring
    comparison, created = Comparison.objects.update_or_create(
        user=user,
        pair_key=pair_key,
        defaults={
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            "is_tie": is_tie,
            "chosen_version_id": chosen.model_version_id,
            "rejected_version_id": rejected.model_version_id,
        },
    )
    outcome = "tie" if is_tie else "preference"
    transaction.on_commit(lambda: metrics.COMPARISONS_TOTAL.labels(outcome).inc())
    return comparison, created
