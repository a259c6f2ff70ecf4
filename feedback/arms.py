"""Which policy version answers a conversation while a canary runs.

A canary answers ``share`` of the conversations created after it started. The arm is drawn once per
conversation, from a hash of the canary and conversation ids (so two server processes that draw at
the same moment draw the same), and stored on the conversation (so a reload, another process or a
restart keeps it). Conversations created before the canary started stay on the live version.

Regenerate answers with the *other* arm than the answer it replaces, so the side-by-side vote that
follows compares live and canary directly (blind: the page does not say which is which).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from django.utils import timezone

from feedback import metrics
from feedback.models import Conversation, Message
from models_registry.models import Canary, ModelVersion
from models_registry.selectors import running_canary_row

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """``version_id`` None: the live version answers."""

    version_id: int | None = None
    arm: str = ""


LIVE = Route()


def draw(canary: Canary, conversation_id: object) -> str:
    """The arm a conversation gets: canary iff sha256("<canary id>:<conversation id>"), read as a
    fraction of 2**256, is below the canary's share."""
    digest = hashlib.sha256(f"{canary.pk}:{conversation_id}".encode()).digest()
    return Conversation.Arm.CANARY if int.from_bytes(digest, "big") / 2**256 < canary.share else Conversation.Arm.LIVE


def arm_of(conversation: Conversation, canary: Canary) -> str:
    """The conversation's arm in ``canary``, drawn and stored on first use ("" if the conversation is
    older than the canary: it is not part of the experiment)."""
    if conversation.canary_id == canary.pk and conversation.arm:
        return conversation.arm
    if conversation.created_at < canary.started_at:
        return ""
    arm = draw(canary, conversation.pk)
    now = timezone.now()
    stored = (
        Conversation.objects.filter(pk=conversation.pk)
        .exclude(canary=canary)
        .update(canary=canary, arm=arm, arm_assigned_at=now)
    )
    if stored:
        logger.info(
            "conversation %s: %s arm of canary %s (version id %s)", conversation.pk, arm, canary.pk, canary.version_id
        )
        metrics.CANARY_ASSIGNMENTS.labels(canary.kind, arm).inc()
    else:  # another process stored it first (and drew the same)
        arm = Conversation.objects.filter(pk=conversation.pk).values_list("arm", flat=True).get()
    conversation.canary, conversation.arm, conversation.arm_assigned_at = canary, arm, now
    return arm


def route(*, conversation: Conversation, regenerate_of: Message | None = None) -> Route:
    """Which version answers the next answer in ``conversation``: its arm's, or for a regeneration
    the other arm's than the answer it regenerates."""
    canary = running_canary_row(ModelVersion.Kind.POLICY)
    return route_in(canary, conversation=conversation, regenerate_of=regenerate_of)


def route_in(canary: Canary | None, *, conversation: Conversation, regenerate_of: Message | None = None) -> Route:
    """``route`` with the running policy canary (``running_canary_row``) already read, by a caller
    that read it in the same statement as something else."""
    if canary is None:
        return LIVE
    to_canary = Route(canary.version_id, Conversation.Arm.CANARY)
    to_live = Route(None, Conversation.Arm.LIVE)
    if regenerate_of is not None and regenerate_of.model_version_id in (canary.version_id, canary.baseline_id):
        arm_of(conversation, canary)
        return to_live if regenerate_of.model_version_id == canary.version_id else to_canary
    arm = arm_of(conversation, canary)
    return to_canary if arm == Conversation.Arm.CANARY else LIVE
