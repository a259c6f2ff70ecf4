"""Stream conversations with their messages, steps, feedback and comparisons, a batch at a time.

Batches are keyset pages of conversation ids (``id > last ORDER BY id LIMIT chunk``), so no cursor
stays open between batches (works through a transaction pooler, where server-side cursors are
off) and memory holds one batch. A batch reads the ids, the messages of the conversations in the id
range ``[first, last]``, then the feedback, comparisons and steps of those messages by their ids,
500 ids a query (an index lookup each; a join on the conversation range made PostgreSQL scan the
whole feedback table per batch). So a batch costs a fixed number of queries per 500 messages.
Only rows that existed when the build started are read: feedback and comparisons up to the highest
id seen then, messages created up to then.

Queries are built with the ORM but their rows are read from the cursor as the driver returns them,
skipping Django's per-value converters (a UUID object per id costs more than the rest of the
build); ids are only compared with each other, so their raw form (hex text on SQLite, ``UUID`` on
PostgreSQL) is fine. ``ConversationData.id`` alone is made a ``UUID`` (the split hashes its text).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connections
from django.db.models import Max, QuerySet
from django.utils import timezone

from feedback.models import Comparison, Conversation, Feedback, Message, MessageStep

# A message id as the driver returns it (see above).
RawId = Any
# (id, role, content, parent_id, status)
MessageRow = tuple[RawId, str, str, RawId | None, str]
# (message_id, step_id, thumbs, rating, correction)
FeedbackRow = tuple[RawId, int | None, str | None, int | None, str]
# (prompt_id, chosen_id, rejected_id, is_tie)
ComparisonRow = tuple[RawId, RawId, RawId, bool]
# (step_id, index, content)
StepRow = tuple[int, int, str]


@dataclass
class ConversationData:
    id: uuid.UUID
    messages: list[MessageRow] = field(default_factory=list)  # by created_at, id
    feedback: list[FeedbackRow] = field(default_factory=list)
    comparisons: list[ComparisonRow] = field(default_factory=list)
    steps: dict[RawId, list[StepRow]] = field(default_factory=dict)  # answer id -> steps by index


@dataclass
class Source:
    """What a build read, so a snapshot traces back to exact rows."""

    started_at: datetime
    max_feedback_id: int
    max_comparison_id: int
    feedback_ids: list[int] | None = None  # [min, max] read
    comparison_ids: list[int] | None = None
    feedback_rows: int = 0
    comparison_rows: int = 0
    messages: int = 0
    steps: int = 0

    @classmethod
    def at_start(cls) -> Source:
        started = timezone.now()
        fb = Feedback.objects.aggregate(m=Max("id"))["m"] or 0
        cmp = Comparison.objects.aggregate(m=Max("id"))["m"] or 0
        return cls(started_at=started, max_feedback_id=fb, max_comparison_id=cmp)

    @property
    def rows_read(self) -> int:
        return self.feedback_rows + self.comparison_rows + self.messages + self.steps

    def as_dict(self) -> dict[str, Any]:
        return {
            "feedback_ids": self.feedback_ids,
            "comparison_ids": self.comparison_ids,
            "feedback_rows": self.feedback_rows,
            "comparison_rows": self.comparison_rows,
            "messages": self.messages,
            "steps": self.steps,
            "read_until": self.started_at.isoformat(),
        }

    def saw(self, attr: str, row_id: int) -> None:
        span = getattr(self, attr)
        if span is None:
            setattr(self, attr, [row_id, row_id])
        elif row_id < span[0]:
            span[0] = row_id
        elif row_id > span[1]:
            span[1] = row_id


def conversations(
    *, source: Source, chunk_size: int, on_batch: Callable[[], None] | None = None
) -> Iterator[ConversationData]:
    """Every conversation, in id order, with what it holds. ``on_batch`` runs after each batch."""
    last: RawId | None = None
    while True:
        ids_query = Conversation.objects.order_by("id").values_list("id")
        if last is not None:
            ids_query = ids_query.filter(id__gt=last)
        ids = [row[0] for row in _raw(ids_query[:chunk_size])]
        if not ids:
            return
        yield from _batch(source, ids[0], ids[-1], ids)
        last = ids[-1]
        if on_batch is not None:
            on_batch()


def _raw(queryset: QuerySet[Any, Any]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``queryset`` as the database driver returns them (no Django converters)."""
    sql, params = queryset.query.get_compiler(using=queryset.db).as_sql()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(2000):
            yield from rows


def _uuid(raw: RawId) -> uuid.UUID:
    return raw if isinstance(raw, uuid.UUID) else uuid.UUID(str(raw))


def _batch(source: Source, first: RawId, last: RawId, ids: list[RawId]) -> Iterator[ConversationData]:
    found = {cid: ConversationData(_uuid(cid)) for cid in ids}
    owner: dict[RawId, ConversationData] = {}  # message id -> its conversation
    answers, user_turns = _read_messages(source, first, last, found, owner)
    with_step_feedback = _read_feedback(source, answers, owner)
    _read_comparisons(source, user_turns, owner)
    _read_steps(source, with_step_feedback, owner)
    yield from found.values()


def _read_messages(
    source: Source,
    first: RawId,
    last: RawId,
    found: dict[RawId, ConversationData],
    owner: dict[RawId, ConversationData],
) -> tuple[list[RawId], list[RawId]]:
    """The messages of the conversations ``found`` (by their id range); returns the answers' and the
    user turns' ids."""
    messages = (
        Message.objects.filter(conversation_id__gte=first, conversation_id__lte=last, created_at__lte=source.started_at)
        .order_by("conversation_id", "created_at", "id")
        .values_list("conversation_id", "id", "role", "content", "parent_id", "status")
    )
    answers: list[RawId] = []
    user_turns: list[RawId] = []
    for cid, mid, role, content, parent_id, status in _raw(messages):
        conv = found.get(cid)
        if conv is None:  # created in the range after the ids query: not part of this build
            continue
        conv.messages.append((mid, role, content, parent_id, status))
        owner[mid] = conv
        if role == "assistant":
            answers.append(mid)
        elif role == "user":
            user_turns.append(mid)
        source.messages += 1
    return answers, user_turns


def _read_feedback(source: Source, answers: list[RawId], owner: dict[RawId, ConversationData]) -> list[RawId]:
    """The feedback on ``answers``; returns the ids of the answers that have step feedback."""
    with_step_feedback: list[RawId] = []
    for part in _parts(answers):
        feedback = (
            Feedback.objects.filter(id__lte=source.max_feedback_id, message_id__in=part)
            .order_by("id")
            .values_list("id", "message_id", "step_id", "thumbs", "rating", "correction")
        )
        for fid, mid, step_id, thumbs, rating, correction in _raw(feedback):
            conv = owner[mid]
            conv.feedback.append((mid, step_id, thumbs, rating, correction or ""))
            if step_id is not None and mid not in conv.steps:
                conv.steps[mid] = []
                with_step_feedback.append(mid)
            source.feedback_rows += 1
            source.saw("feedback_ids", fid)
    return with_step_feedback


def _read_comparisons(source: Source, user_turns: list[RawId], owner: dict[RawId, ConversationData]) -> None:
    for part in _parts(user_turns):
        comparisons = (
            Comparison.objects.filter(id__lte=source.max_comparison_id, prompt_id__in=part)
            .order_by("id")
            .values_list("id", "prompt_id", "chosen_id", "rejected_id", "is_tie")
        )
        for comparison_id, prompt_id, chosen_id, rejected_id, is_tie in _raw(comparisons):
            owner[prompt_id].comparisons.append((prompt_id, chosen_id, rejected_id, bool(is_tie)))
            source.comparison_rows += 1
            source.saw("comparison_ids", comparison_id)


def _read_steps(source: Source, with_step_feedback: list[RawId], owner: dict[RawId, ConversationData]) -> None:
    """Steps only of the answers that have step feedback: the rest are never used."""
    for part in _parts(with_step_feedback):
        steps = (
            MessageStep.objects.filter(message_id__in=part)
            .order_by("message_id", "index")
            .values_list("message_id", "id", "index", "content")
        )
        for mid, step_id, index, content in _raw(steps):
            owner[mid].steps[mid].append((step_id, index, content))
            source.steps += 1


def _parts(ids: list[RawId], size: int = 500) -> Iterator[list[RawId]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]
