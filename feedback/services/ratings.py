"""Feedback on answers and their steps, and the user's satisfaction it moves (``feedback_upsert``,
``feedback_delete``): the rating hot path. Locking: see ``feedback.services``."""

from __future__ import annotations

import copy
import functools
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import User
from django.db import DatabaseError, connection, models, transaction
from django.db.models import QuerySet
from django.utils import timezone

from feedback import metrics
from feedback.exceptions import FeedbackError, NotFound
from feedback.models import (
    Conversation,
    Feedback,
    Message,
    MessageStep,
    UserSatisfaction,
)
from feedback.rows import FEEDBACK_COLUMNS, feedback_from, stored
from models_registry.models import ModelVersion


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""A field the caller did not send: an update keeps its stored value."""


@dataclass(frozen=True)
class FeedbackResult:
    feedback: Feedback
    created: bool
    satisfaction: UserSatisfaction


def satisfaction_lock(*, user: User) -> UserSatisfaction:
    """Lock (creating if needed) the user's satisfaction row. Call inside a transaction."""
    try:
        return UserSatisfaction.objects.select_for_update().get(user=user)
    except UserSatisfaction.DoesNotExist:
        UserSatisfaction.objects.bulk_create([UserSatisfaction(user=user)], ignore_conflicts=True)
        return UserSatisfaction.objects.select_for_update().get(user=user)


def _account(satisfaction: UserSatisfaction, feedback: Feedback, sign: int) -> None:
    value = feedback.value
    if value is not None:
        satisfaction.count += sign
        satisfaction.value_sum = max(0.0, satisfaction.value_sum + sign * value)
    if feedback.thumbs == Feedback.Thumbs.UP:
        satisfaction.thumbs_up += sign
    elif feedback.thumbs == Feedback.Thumbs.DOWN:
        satisfaction.thumbs_down += sign
    if feedback.rating is not None:
        satisfaction.ratings += sign
        satisfaction.rating_sum += sign * feedback.rating


def _check_tags(tags: Iterable[str]) -> list[str]:
    allowed = set(settings.FEEDBACK_TAGS)
    tags = list(dict.fromkeys(tags))
    unknown = [tag for tag in tags if tag not in allowed]
    if unknown:
        raise FeedbackError(
            f"Unknown tag: {', '.join(unknown)}.",
            code="unknown_tag",
            fields={"tags": [f"Unknown tag {tag!r}; allowed: {', '.join(sorted(allowed))}." for tag in unknown]},
        )
    return tags


M = TypeVar("M", bound=models.Model)


def _one(queryset: QuerySet[M]) -> M | None:
    """The row a unique lookup finds, or None: one query with no ORDER BY."""
    return next(iter(queryset.order_by()[:1]), None)


def _own_assistant_message(*, user: User, message_id: uuid.UUID) -> Message:
    # Unordered: ``first()`` would add the model's ORDER BY, which costs SQL compilation on every rating.
    message = _one(Message.objects.select_related("model_version").filter(id=message_id, conversation__user=user))
    if message is None:
        raise NotFound("Message not found.")
    _check_rateable(message)
    return message


def _check_rateable(message: Message) -> None:
    if message.role != Message.Role.ASSISTANT:
        raise FeedbackError(
            "Only assistant messages can be rated.",
            code="not_an_assistant_message",
            fields={"message_id": ["This is a user message; rate the assistant's answer instead."]},
        )
    if message.status == Message.Status.FAILED:
        raise FeedbackError(
            "This answer failed to generate and cannot be rated.",
            code="message_failed",
            fields={"message_id": ["The answer failed to generate."]},
        )


def _step_of(message: Message, step_index: int) -> MessageStep:
    step = MessageStep.objects.filter(message=message, index=step_index).first()
    if step is None:
        count = MessageStep.objects.filter(message=message).count()
        hint = f"it has {count} step{'s' if count != 1 else ''}" + (f" (0..{count - 1})" if count else "")
        raise FeedbackError(
            f"Step index {step_index} is out of range: {hint}.",
            code="step_out_of_range",
            fields={"step_index": [f"Step index {step_index} is out of range: {hint}."]},
        )
    return step


# --- The rating hot path in two statements ------------------------------------------------------
# ``feedback_upsert`` is the platform's busiest write (bench/feedback_load.py). Through the ORM it was
# eight round trips and most of a request's server CPU went to compiling their SQL (py-spy; README,
# "Feedback API under load"). Here it is two statements between BEGIN and COMMIT: lock the user's
# satisfaction row and, in the same statement, read the message, its version, the step and the
# feedback already given; then write the feedback and the satisfaction in one statement. The rules
# (what may be rated, how a score is accounted) stay in ``feedback_upsert``. On SQLite (development)
# the same steps go through the ORM.
#
# The read shares the lock's statement, so it sees the database as it was when the statement began:
# if it waited for the lock, another write of the user's (which held it) may have committed since.
# The satisfaction row itself is read as that write left it (PostgreSQL returns a locked row's newest
# version), and every decision made on an older read is checked before it counts: the write is
# conditional on the feedback row being as read (absent for an insert, the same values for an
# update) and writes nothing otherwise; then the target is read again, now under the lock and so
# settled, and the rules run once more. An error (not found, not rateable, step out of range) is
# also confirmed on such a read before it is raised. A second attempt cannot miss again while the
# lock is held, so there are at most two.


@functools.cache
def _sql() -> dict[str, str]:
    """The statements, made once (table names from the models, quoted)."""
    q = connection.ops.quote_name
    t = {
        "sat": q(UserSatisfaction._meta.db_table),
        "msg": q(Message._meta.db_table),
        "conv": q(Conversation._meta.db_table),
        "ver": q(ModelVersion._meta.db_table),
        "step": q(MessageStep._meta.db_table),
        "fb": q(Feedback._meta.db_table),
    }
    satisfaction = (
        "UPDATE {sat} SET count = %(count)s, value_sum = %(value_sum)s, thumbs_up = %(thumbs_up)s,"
        " thumbs_down = %(thumbs_down)s, ratings = %(ratings)s, rating_sum = %(rating_sum)s,"
        " updated_at = %(now)s WHERE user_id = %(user)s"
    ).format(**t)
    # Its columns named apart: it is also a subquery of "lock_target".
    target = (
        "SELECT m.role, m.status, m.content, m.conversation_id, m.model_version_id, v.kind, v.number,"
        " st.id AS step_id, st.content AS step_content, {given}"
        " FROM {msg} m JOIN {conv} c ON c.id = m.conversation_id"
        " LEFT JOIN {ver} v ON v.id = m.model_version_id"
        " LEFT JOIN {step} st ON st.message_id = m.id AND st.index = %(step_index)s::integer"
        " LEFT JOIN {fb} f ON f.user_id = %(user)s AND f.message_id = m.id AND ("
        "(%(step_index)s::integer IS NULL AND f.step_id IS NULL) OR f.step_id = st.id)"
        " WHERE m.id = %(message)s AND c.user_id = %(user)s"
    ).format(given=", ".join(f"f.{name} AS f_{name}" for name in FEEDBACK_COLUMNS), **t)
    # ``AND EXISTS (SELECT FROM f)``: when the feedback row is not as read, the satisfaction (computed
    # from that read) is not written either; the second attempt would overwrite it, but no statement
    # should store a total it knows to be wrong.
    return {
        "lock_target": (
            "SELECT s.count, s.value_sum, s.thumbs_up, s.thumbs_down, s.ratings, s.rating_sum, s.updated_at, t.*"
            " FROM {sat} s LEFT JOIN ({target}) t ON true WHERE s.user_id = %(user)s FOR UPDATE OF s"
        ).format(target=target, **t),
        "target": target,
        "insert": (
            "WITH f AS (INSERT INTO {fb} (user_id, message_id, step_id, thumbs, rating, comment, tags, correction,"
            " model_version_id, created_at, updated_at) VALUES (%(user)s, %(message)s, %(step)s, %(thumbs)s,"
            " %(rating)s, %(comment)s, %(tags)s::jsonb, %(correction)s, %(model_version)s, %(now)s, %(now)s)"
            " ON CONFLICT DO NOTHING RETURNING id),"
            " s AS ({satisfaction} AND EXISTS (SELECT FROM f)) SELECT id FROM f"
        ).format(satisfaction=satisfaction, **t),
        "update": (
            "WITH f AS (UPDATE {fb} SET thumbs = %(thumbs)s, rating = %(rating)s, comment = %(comment)s,"
            " tags = %(tags)s::jsonb, correction = %(correction)s, updated_at = %(now)s WHERE id = %(id)s"
            " AND thumbs IS NOT DISTINCT FROM %(was_thumbs)s AND rating IS NOT DISTINCT FROM %(was_rating)s"
            " AND comment = %(was_comment)s AND tags = %(was_tags)s::jsonb AND correction = %(was_correction)s"
            " RETURNING id), s AS ({satisfaction} AND EXISTS (SELECT FROM f)) SELECT id FROM f"
        ).format(satisfaction=satisfaction, **t),
    }


_SATISFACTION_FIELDS = ("count", "value_sum", "thumbs_up", "thumbs_down", "ratings", "rating_sum", "updated_at")

Target = tuple[Message, MessageStep | None, Feedback | None]


def _locked_target(*, user: User, message_id: uuid.UUID, step_index: int | None) -> tuple[UserSatisfaction, Target]:
    """Lock the user's satisfaction row (``satisfaction_lock``: created the first time) and read the
    target (``_rating_target``), in one statement on PostgreSQL. The target may have been read
    before the lock was granted (see above): an error it gives is confirmed on a read under the lock."""
    if connection.vendor != "postgresql":
        return satisfaction_lock(user=user), _rating_target(user=user, message_id=message_id, step_index=step_index)
    params: dict[str, Any] = {"user": user.pk, "message": message_id, "step_index": step_index}
    with connection.cursor() as cursor:
        cursor.execute(_sql()["lock_target"], params)
        row = cursor.fetchone()
    if row is None:  # the user's first rating: no satisfaction row yet
        return satisfaction_lock(user=user), _rating_target(user=user, message_id=message_id, step_index=step_index)
    satisfaction = stored(UserSatisfaction(user_id=user.pk, **dict(zip(_SATISFACTION_FIELDS, row[:7], strict=True))))
    try:
        return satisfaction, _target_of(row[7:] if row[7] is not None else None, user, message_id, step_index)
    except FeedbackError as error:
        if error.code == "step_out_of_range":  # ``_step_of`` read the steps afresh, under the lock
            raise
        return satisfaction, _rating_target(user=user, message_id=message_id, step_index=step_index)


def _rating_target(*, user: User, message_id: uuid.UUID, step_index: int | None) -> Target:
    """The user's answer to rate (the errors of ``_own_assistant_message``), the step (those of
    ``_step_of``) and the feedback already given on it, in one query."""
    if connection.vendor != "postgresql":
        message = _own_assistant_message(user=user, message_id=message_id)
        step = _step_of(message, step_index) if step_index is not None else None
        return message, step, _one(Feedback.objects.filter(user=user, message=message, step=step))
    with connection.cursor() as cursor:
        cursor.execute(_sql()["target"], {"user": user.pk, "message": message_id, "step_index": step_index})
        row = cursor.fetchone()
    return _target_of(row, user, message_id, step_index)


def _target_of(row: Sequence[Any] | None, user: User, message_id: uuid.UUID, step_index: int | None) -> Target:
    """The objects a row of the "target" query describes; its errors."""
    if row is None:
        raise NotFound("Message not found.")
    role, status, content, conversation_id, version_id, kind, number, step_id, step_content, *given = row
    message = Message(
        id=message_id,
        conversation_id=conversation_id,
        role=role,
        status=status,
        content=content,
        model_version_id=version_id,
    )
    message.model_version = ModelVersion(id=version_id, kind=kind, number=number) if version_id else None
    _check_rateable(message)
    step = None
    if step_index is not None:
        if step_id is None:
            step = _step_of(message, step_index)  # raises, saying how many steps there are (unless just made)
        else:
            step = MessageStep(id=step_id, message=message, index=step_index, content=step_content)
    return message, step, feedback_from(given, user=user, message=message, step=step)


def _feedback_and_satisfaction_write(
    feedback: Feedback, satisfaction: UserSatisfaction, was: dict[str, Any] | None
) -> bool:
    """Insert (``was`` None) or update ``feedback`` and store ``satisfaction``, in one statement. False,
    with nothing written, when the feedback row is not as read (``was``: its values then)."""
    if connection.vendor != "postgresql":
        feedback.save()
        satisfaction.save()
        return True
    now = timezone.now()
    params = {
        "user": feedback.user_id,
        "thumbs": feedback.thumbs,
        "rating": feedback.rating,
        "comment": feedback.comment,
        "tags": json.dumps(feedback.tags),
        "correction": feedback.correction,
        "now": now,
        **{name: getattr(satisfaction, name) for name in _SATISFACTION_FIELDS[:-1]},
    }
    with connection.cursor() as cursor:
        if was is None:
            params |= {"message": feedback.message_id, "step": feedback.step_id}
            params["model_version"] = feedback.model_version_id
            cursor.execute(_sql()["insert"], params)
        else:
            cursor.execute(_sql()["update"], params | {"id": feedback.pk} | was)
        row = cursor.fetchone()
    if row is None:
        return False
    if was is None:
        (feedback.id,) = row
        feedback.created_at = now
        stored(feedback)
    feedback.updated_at = satisfaction.updated_at = now
    return True


def _as_read(feedback: Feedback) -> dict[str, Any]:
    """The values the update of ``feedback`` is conditional on."""
    return {
        "was_thumbs": feedback.thumbs,
        "was_rating": feedback.rating,
        "was_comment": feedback.comment,
        "was_tags": json.dumps(feedback.tags),
        "was_correction": feedback.correction,
    }


@transaction.atomic
def feedback_upsert(
    *,
    user: User,
    message_id: uuid.UUID,
    step_index: int | None = None,
    thumbs: str | None = UNSET,
    rating: int | None = UNSET,
    comment: str | None = UNSET,
    tags: list[str] = UNSET,
    correction: str | None = UNSET,
) -> FeedbackResult:
    """Create or update the user's feedback on one of their assistant messages (or one of its steps).

    Fields left ``UNSET`` keep their stored value on update, so thumbs, stars and a comment can be
    sent separately; ``None`` clears a field. ``correction``: what the answer should have said (the
    whole answer, so not on a step); the processor pairs it as chosen over the answer.
    """
    locked, target = _locked_target(user=user, message_id=message_id, step_index=step_index)
    fields: dict[str, Any] = {
        "thumbs": thumbs,
        "rating": rating,
        "comment": comment,
        "tags": tags,
        "correction": correction,
    }
    try:
        result = _upsert(user, copy.copy(locked), target, **fields)
    except FeedbackError as error:
        # "Nothing left to keep" is decided on the feedback as read, which may predate the lock.
        if error.code != "empty_feedback" or connection.vendor != "postgresql":
            raise
        result = None
    if result is None:  # the target was read before another write of the user's: read it again, under the lock
        target = _rating_target(user=user, message_id=message_id, step_index=step_index)
        result = _upsert(user, copy.copy(locked), target, **fields)
        if result is None:
            raise DatabaseError(
                f"Feedback of user {user.pk} on message {message_id} (step {step_index}) changed while the"
                " user's satisfaction row was locked: a write that does not take that lock?"
            )
    satisfaction, step = result.satisfaction, target[1]
    model_version = target[0].model_version.label if target[0].model_version else "none"
    transaction.on_commit(
        lambda: metrics.record_feedback(
            thumbs=thumbs if thumbs is not UNSET else None,
            rating=rating if rating is not UNSET else None,
            comment=bool(comment is not UNSET and comment),
            target="step" if step else "message",
            model_version=model_version,
            score=satisfaction.score,
        )
    )
    return result


def _upsert(
    user: User,
    satisfaction: UserSatisfaction,
    target: Target,
    *,
    thumbs: str | None,
    rating: int | None,
    comment: str | None,
    tags: list[str],
    correction: str | None,
) -> FeedbackResult | None:
    """``feedback_upsert``'s rules on the target as read, and the write; None if the feedback row was
    not as read (nothing written)."""
    message, step, feedback = target
    if step is not None and correction not in (UNSET, None, ""):
        message_text = "A correction replaces the whole answer: send it without step_index."
        raise FeedbackError(message_text, code="correction_on_step", fields={"correction": [message_text]})
    if isinstance(correction, str) and len(correction.strip()) > settings.FEEDBACK_CORRECTION_MAX_LENGTH:
        limit = settings.FEEDBACK_CORRECTION_MAX_LENGTH
        message_text = f"A correction is at most {limit} characters (FEEDBACK_CORRECTION_MAX_LENGTH)."
        raise FeedbackError(message_text, code="max_length", fields={"correction": [message_text]})
    if tags is not UNSET:
        tags = _check_tags(tags)
    if thumbs not in (UNSET, None, *Feedback.Thumbs.values):
        raise FeedbackError("Thumbs must be 'up' or 'down'.", fields={"thumbs": ["Must be 'up' or 'down'."]})
    if isinstance(rating, int) and not 1 <= rating <= 5:
        raise FeedbackError("Rating must be between 1 and 5.", fields={"rating": ["Must be between 1 and 5."]})

    was = None
    if feedback is None:
        feedback = Feedback(user=user, message=message, step=step, model_version_id=message.model_version_id)
    else:
        was = _as_read(feedback)
        _account(satisfaction, feedback, -1)

    if thumbs is not UNSET:
        feedback.thumbs = thumbs
    if rating is not UNSET:
        feedback.rating = rating
    if comment is not UNSET:
        feedback.comment = (comment or "").strip()
    if tags is not UNSET:
        feedback.tags = tags
    if correction is not UNSET:
        feedback.correction = (correction or "").strip()
    if feedback.thumbs is None and feedback.rating is None and not feedback.comment and not feedback.correction:
        raise FeedbackError(
            "Feedback must include thumbs, a rating, a comment or a correction (to remove feedback, delete it).",
            code="empty_feedback",
        )
    _account(satisfaction, feedback, +1)
    if not _feedback_and_satisfaction_write(feedback, satisfaction, was):
        return None
    return FeedbackResult(feedback=feedback, created=was is None, satisfaction=satisfaction)


@transaction.atomic
def feedback_delete(*, user: User, feedback_id: int) -> UserSatisfaction:
    satisfaction = satisfaction_lock(user=user)
    feedback = Feedback.objects.filter(id=feedback_id, user=user).first()
    if feedback is None:
        raise NotFound("Feedback not found.")
    _account(satisfaction, feedback, -1)
    feedback.delete()
    satisfaction.save()
    return satisfaction
