"""The chat's reads and short writes, sync: the consumer and the streamed answer (``stream``) call them
through ``core.asyncdb.db_async``, one trip to a database thread each. Each is its own short
transaction (or, on PostgreSQL, for the send and the answer's end, a single statement that writes
what belongs together); none is held open while the model streams."""

from __future__ import annotations

import datetime
import functools
import json
import logging
import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import DatabaseError, connection, transaction
from django.db.models import Prefetch, prefetch_related_objects
from django.utils import timezone

from core import prompts, ratelimit
from feedback import arms
from feedback.arms import Route
from feedback.exceptions import FeedbackError, NotFound
from feedback.models import Conversation, Feedback, Message, MessageStep
from models_registry.models import Canary, ModelVersion

logger = logging.getLogger(__name__)

# An answer begun: what the model is sent, the route (version and arm), and the answer's row, stored
# as streaming by the version expected to answer (``generation_begin``).
Begun = tuple[list[dict[str, str]], Route, Message]


# --- Reads and short writes (sync; the consumer calls them through core.asyncdb.db_async) -----------


def conversation_for_user(*, user: User, conversation_id: uuid.UUID) -> Conversation | None:
    return Conversation.objects.filter(id=conversation_id, user=user).first()


def conversation_turns(*, conversation: Conversation, for_display: bool = True) -> list[tuple[Message, list[Message]]]:
    """The conversation as (user turn, its answers) pairs, oldest first. ``for_display`` also loads
    each answer's steps and model version, which the page shows and the model's history does not."""
    messages = Message.objects.filter(conversation=conversation).order_by("created_at", "id")
    if for_display:
        messages = messages.select_related("model_version").prefetch_related(
            Prefetch("steps", queryset=MessageStep.objects.order_by("index"))
        )
    turns: dict[uuid.UUID, tuple[Message, list[Message]]] = {}
    for message in messages:
        if message.role == Message.Role.USER:
            turns[message.id] = (message, [])
        elif message.parent_id in turns:
            turns[message.parent_id][1].append(message)
    return list(turns.values())


def turns_for_page(*, user: User, conversation: Conversation) -> list[tuple[Message, list[Message]]]:
    """``conversation_turns`` with the user's own feedback attached to each answer and step as
    ``my_feedback``, so the page shows what they already said."""
    turns = conversation_turns(conversation=conversation)
    _with_my_feedback([answer for _, group in turns for answer in group], user_id=user.pk)
    return turns


def _with_my_feedback(answers: list[Message], *, user_id: int) -> None:
    """Attach the user's own feedback to each answer and each of its steps (loaded) as ``my_feedback``
    (None where they gave none), one query."""
    given = {
        (f.message_id, f.step_id): f
        for f in Feedback.objects.filter(user_id=user_id, message__in=[a.id for a in answers])
    }
    for answer in answers:
        answer.my_feedback = given.get((answer.id, None))  # type: ignore[attr-defined]
        for step in answer.steps.all():
            step.my_feedback = given.get((answer.id, step.id))  # type: ignore[attr-defined]


def history_for(*, prompt: Message) -> list[dict[str, str]]:
    """What the model is sent to answer ``prompt``: the conversation so far in chat format, by the
    rule the feedback processor trains on (``core.prompts``)."""
    rows = (
        Message.objects.filter(conversation_id=prompt.conversation_id)
        .order_by("created_at", "id")
        .values_list("id", "role", "content", "parent_id", "status")
    )
    for turn in prompts.conversation_turns(rows):
        if turn.user[0] == prompt.id:
            return prompts.as_chat(turn.context)
    raise NotFound("That message is not a user turn of this conversation.")


def generation_allow(*, user: User) -> None:
    """Per-user limit on answers started (send and regenerate), about CHAT_RATE_PER_MINUTE over any
    minute (``core.ratelimit``'s estimate). The counter lives in the cache (Redis when REDIS_URL is
    set), so it holds across processes; with the cache down it allows."""
    verdict = ratelimit.hit(f"chat-rate:{user.pk}", ratelimit.Rate(settings.CHAT_RATE_PER_MINUTE, 60))
    if not verdict.allowed:
        raise FeedbackError(
            f"You are sending messages too fast; try again in {verdict.retry_after} s.", code="throttled"
        )


def socket_frame_allow(*, user: User) -> bool:
    """Per-user limit on feedback and compare frames on the chat socket (CHAT_SOCKET_RATE), across
    all the user's sockets and processes: the REST API's throttle, for the socket."""
    return ratelimit.hit(f"chat-socket:{user.pk}", settings.CHAT_SOCKET_RATE).allowed


def user_turn_clean(content: object) -> str:
    if not isinstance(content, str) or not content.strip():
        raise FeedbackError("Type a message first.", code="empty_message")
    content = content.strip()
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(content) > limit:
        raise FeedbackError(f"Messages are limited to {limit} characters; this one has {len(content)}.")
    return content


@transaction.atomic(savepoint=False)  # inside a caller's transaction: no SAVEPOINT trips of its own
def user_turn_create(*, conversation: Conversation, content: str) -> Message:
    content = user_turn_clean(content)
    message = Message.objects.create(conversation=conversation, role=Message.Role.USER, content=content)
    if not conversation.title:  # the first turn names the conversation
        conversation.title = content[:60]  # in memory too: the socket keeps this object for its next sends
        Conversation.objects.filter(id=conversation.id).update(title=conversation.title)
    return message


def send_begin(
    *, user: User, conversation: Conversation, content: str, live_version_id: int | None
) -> tuple[Message, Begun]:
    """The chat's ``send``, all before the model is asked in one trip to a database thread: the rate
    limit, then the user's turn and the answer to it begun (``generation_begin``), stored together.
    On PostgreSQL that is two statements (``_send_begin_sql``); elsewhere the ORM's transaction."""
    generation_allow(user=user)
    if connection.vendor == "postgresql":
        content = user_turn_clean(content)
        return _send_begin_sql(conversation=conversation, content=content, live_version_id=live_version_id)
    with transaction.atomic():
        prompt = user_turn_create(conversation=conversation, content=content)
        begun = generation_begin(prompt=prompt, regenerate_of=None, version_id=None, live_version_id=live_version_id)
    return prompt, begun


# --- A send in two statements (PostgreSQL) ----------------------------------------------------------
# Through the ORM a send was seven round trips in a transaction (BEGIN, the user's turn, the title, the
# history, the canary, the answer, COMMIT), about 1 ms of server CPU each, on every message of every
# chat (bench/chat_overhead.py). Here: one read (the conversation so far, with the running policy
# canary on each row) and one write (the user's turn, the answer begun and the first turn's title, in
# one statement, so together or not at all). The history is the read's rows and the new turn, by the
# same rule; the route is ``arms.route_in``'s, as on the ORM path.


@functools.cache
def _send_sql() -> tuple[str, str, list[str]]:
    """The read, the write, and the canary's attribute names in the read's column order."""
    qn = connection.ops.quote_name
    canary_fields = list(Canary._meta.concrete_fields)  # its primary key first
    canary_columns = ", ".join(f"c.{qn(f.column)}" for f in canary_fields)
    message, canary, conversation = Message._meta.db_table, Canary._meta.db_table, Conversation._meta.db_table
    read = (
        f"SELECT {canary_columns}, m.created_at, m.id, m.role, m.content, m.parent_id, m.status"
        f" FROM (VALUES (1)) AS one"
        f" LEFT JOIN {qn(canary)} c ON c.kind = %(kind)s AND c.outcome = %(running)s"
        f" LEFT JOIN {qn(message)} m ON m.conversation_id = %(conversation)s"
        f" ORDER BY m.created_at, m.id"
    )
    columns = "id, conversation_id, role, content, parent_id, model_version_id, status, error, created_at"
    write = (
        f"WITH u AS (INSERT INTO {qn(message)} ({columns})"
        f" VALUES (%(prompt)s, %(conversation)s, %(user)s, %(content)s, NULL, NULL, %(complete)s, '', %(prompt_at)s)"
        f" RETURNING heartbeat_at),"
        f" a AS (INSERT INTO {qn(message)} ({columns})"
        f" VALUES (%(answer)s, %(conversation)s, %(assistant)s, '', %(prompt)s, %(version)s, %(streaming)s, '',"
        f" %(answer_at)s)),"
        f" t AS (UPDATE {qn(conversation)} SET title = %(title)s WHERE id = %(conversation)s AND title = '')"
        f" SELECT heartbeat_at FROM u"
    )
    return read, write, [f.attname for f in canary_fields]


def _send_begin_sql(*, conversation: Conversation, content: str, live_version_id: int | None) -> tuple[Message, Begun]:
    read, write, canary_names = _send_sql()
    with connection.cursor() as cursor:
        cursor.execute(
            read, {"kind": ModelVersion.Kind.POLICY, "running": Canary.Outcome.RUNNING, "conversation": conversation.pk}
        )
        rows = cursor.fetchall()
    width = len(canary_names)
    canary = Canary.from_db(connection.alias, canary_names, rows[0][:width]) if rows[0][0] is not None else None
    prompt_id, answer_id = uuid.uuid4(), uuid.uuid4()
    # Two stamps in order: the page and the history order a conversation by (created_at, id).
    prompt_at = timezone.now()
    answer_at = max(timezone.now(), prompt_at + datetime.timedelta(microseconds=1))
    # The history by the rule the ORM path applies to the rows once written (``history_for``): the new
    # turn placed among them by (created_at, id), as PostgreSQL orders them (uuids byte by byte).
    stamped_rows = [row[width:] for row in rows if row[width] is not None]
    stamped_rows.append((prompt_at, prompt_id, Message.Role.USER, content, None, Message.Status.COMPLETE))
    stamped_rows.sort(key=lambda row: (row[0], row[1]))
    turns = prompts.conversation_turns([row[1:] for row in stamped_rows])
    turn = next(turn for turn in turns if turn.user[0] == prompt_id)
    route = arms.route_in(canary, conversation=conversation)
    expected = route.version_id if route.version_id is not None else live_version_id
    title = content[:60]
    with connection.cursor() as cursor:
        cursor.execute(
            write,
            {
                "prompt": prompt_id, "answer": answer_id, "conversation": conversation.pk, "content": content,
                "user": Message.Role.USER, "assistant": Message.Role.ASSISTANT, "version": expected,
                "complete": Message.Status.COMPLETE, "streaming": Message.Status.STREAMING,
                "prompt_at": prompt_at, "answer_at": answer_at, "title": title,
            },
        )  # fmt: skip
        (stamped,) = cursor.fetchone()
    if not conversation.title:  # in memory too: the socket keeps this object for its next sends
        conversation.title = title
    prompt = _message_stored(
        id=prompt_id, conversation=conversation, role=Message.Role.USER, content=content, parent=None,
        model_version_id=None, status=Message.Status.COMPLETE, created_at=prompt_at, heartbeat_at=stamped,
    )  # fmt: skip
    answer = _message_stored(
        id=answer_id, conversation=conversation, role=Message.Role.ASSISTANT, content="", parent=prompt,
        model_version_id=expected, status=Message.Status.STREAMING, created_at=answer_at, heartbeat_at=stamped,
    )  # fmt: skip
    return prompt, (prompts.as_chat(turn.context), route, answer)


def _message_stored(**fields: Any) -> Message:
    """A ``Message`` as the ORM would hold it after its ``create``, for a row written by SQL."""
    message = Message(
        **fields, error="", source=Message.Source.PLATFORM, external_model="",
        token_count=None, time_to_first_token_ms=None, duration_ms=None,
    )  # fmt: skip
    message._state.adding, message._state.db = False, connection.alias
    return message


def answer_get(*, conversation: Conversation, answer_id: uuid.UUID) -> Message:
    answer = (
        Message.objects.select_related("model_version")
        .prefetch_related(Prefetch("steps", queryset=MessageStep.objects.order_by("index")))
        .filter(id=answer_id, conversation=conversation, role=Message.Role.ASSISTANT)
        .first()
    )
    if answer is None:
        raise NotFound("Answer not found.")
    return answer


def answer_siblings(*, answer: Message) -> list[Message]:
    """The answers to the same user turn (regenerations), oldest first, failed ones left out."""
    return list(
        Message.objects.filter(parent_id=answer.parent_id, role=Message.Role.ASSISTANT)
        .exclude(status=Message.Status.FAILED)
        .order_by("created_at", "id")
    )


def answer_with_siblings(*, conversation: Conversation, answer_id: uuid.UUID) -> tuple[Message, list[Message]]:
    """``answer_get`` and ``answer_siblings``: what the page shows when an answer ends, in one trip,
    with the feedback the conversation's user gave it and its steps while it streamed."""
    answer = answer_get(conversation=conversation, answer_id=answer_id)
    _with_my_feedback([answer], user_id=conversation.user_id)
    return answer, answer_siblings(answer=answer)


def regeneration_of(*, conversation: Conversation, answer_id: uuid.UUID) -> Message:
    """The answer to regenerate, with its ``parent`` (the user turn to answer again) loaded."""
    answer = (
        Message.objects.select_related("parent")
        .filter(id=answer_id, conversation=conversation, role=Message.Role.ASSISTANT)
        .first()
    )
    if answer is None or answer.parent is None:
        raise NotFound("Answer not found.")
    return answer


def regeneration_begin(
    *, user: User, conversation: Conversation, answer_id: uuid.UUID, live_version_id: int | None
) -> Begun:
    """The chat's ``regenerate``, all before the model is asked in one trip to a database thread: the
    answer to regenerate (``regeneration_of``), the rate limit, then the new answer begun
    (``generation_begin``, which routes it to the other arm of a canary)."""
    answer = regeneration_of(conversation=conversation, answer_id=answer_id)
    generation_allow(user=user)
    assert answer.parent is not None  # regeneration_of checked it
    return generation_begin(
        prompt=answer.parent, regenerate_of=answer, version_id=None, live_version_id=live_version_id
    )


def generation_plan(
    *, prompt: Message, regenerate_of: Message | None = None, version_id: int | None = None
) -> tuple[list[dict[str, str]], Route]:
    """What the model is sent, and which version answers (``version_id`` when given, else the
    conversation's canary arm, or for a regeneration the other arm)."""
    if version_id is not None:
        return history_for(prompt=prompt), Route(version_id, "")
    return history_for(prompt=prompt), arms.route(conversation=prompt.conversation, regenerate_of=regenerate_of)


def generation_begin(
    *, prompt: Message, regenerate_of: Message | None, version_id: int | None, live_version_id: int | None
) -> Begun:
    """``generation_plan``, and the answer stored as streaming by the version expected to answer (the
    route's, else the live one ``live_version_id``): one trip to a database thread before the model
    is called. ``answer_stream`` corrects the row in the rare case another version ends up answering
    (a canary that cannot load) or none can."""
    history, route = generation_plan(prompt=prompt, regenerate_of=regenerate_of, version_id=version_id)
    expected = route.version_id if route.version_id is not None else live_version_id
    answer = _answer_create(prompt=prompt, model_version_id=expected, status=Message.Status.STREAMING)
    return history, route, answer


def _answer_create(*, prompt: Message, model_version_id: int | None, status: str, error: str = "") -> Message:
    return Message.objects.create(
        conversation=prompt.conversation,
        role=Message.Role.ASSISTANT,
        parent=prompt,
        model_version_id=model_version_id,
        status=status,
        error=error,
    )


def _answer_fail(*, answer: Message, error: str) -> None:
    answer.model_version_id, answer.status, answer.error = None, Message.Status.FAILED, error
    answer.save(update_fields=["model_version", "status", "error"])


def _step_create(*, answer: Message, index: int, content: str) -> MessageStep:
    """A finished step's row (on PostgreSQL one ``INSERT`` made once, not compiled by the ORM per row:
    0.28 against 0.19 ms of the database thread's CPU here, five or so times an answer)."""
    if connection.vendor != "postgresql":
        return MessageStep.objects.create(message=answer, index=index, content=content)
    with connection.cursor() as cursor:
        cursor.execute(_step_sql(), (answer.pk, index, content))
        (step_id,) = cursor.fetchone()
    step = MessageStep(id=step_id, message=answer, index=index, content=content)
    step._state.adding, step._state.db = False, connection.alias
    return step


@functools.cache
def _step_sql() -> str:
    table = connection.ops.quote_name(MessageStep._meta.db_table)
    return f"INSERT INTO {table} (message_id, index, content) VALUES (%s, %s, %s) RETURNING id"


def _answer_store_final(*, answer: Message, first_index: int, steps: list[str], shown: bool) -> list[Message] | None:
    """Store the answer as it ended and its steps not stored yet. ``shown``: the page shows it next, so
    in the same trip load its steps onto ``answer`` (``answer.steps.all()``, in order) with the user's
    feedback on them (given while it streamed) and return the answers to the same turn
    (``answer_siblings``): what ``answer_with_siblings`` would read again. None if those reads fail
    (the answer is stored; the caller reads again)."""
    # A stop that lands while a finished step is being stored cannot tell whether its row was written
    # (the thread goes on; the await does not): a step already there is the same text, and is kept.
    if connection.vendor == "postgresql":
        return _answer_store_final_sql(answer=answer, first_index=first_index, steps=steps, shown=shown)
    with transaction.atomic():
        MessageStep.objects.bulk_create(
            [MessageStep(message=answer, index=first_index + i, content=c) for i, c in enumerate(steps)],
            ignore_conflicts=True,
        )
        answer.save(
            update_fields=["content", "status", "error", "token_count", "duration_ms", "time_to_first_token_ms"]
        )
    if not shown:
        return None
    try:
        # Read back, not built from memory: a step kept by ``ignore_conflicts`` has the stored row's id.
        prefetch_related_objects([answer], Prefetch("steps", queryset=MessageStep.objects.order_by("index")))
        _with_my_feedback([answer], user_id=answer.conversation.user_id)
        return answer_siblings(answer=answer)
    except DatabaseError:
        logger.warning("answer %s is stored; reading it back for the page failed", answer.id, exc_info=True)
        return None


# --- The answer's end in two statements (PostgreSQL) ------------------------------------------------
# Through the ORM the answer's last trip was seven round trips (BEGIN, the steps left, the answer,
# COMMIT; then its steps, the user's feedback on it and the answers to its turn). Here: one write (the
# steps left and the answer, together) and, when the page shows it, one read of all three, after the
# write (so steps kept by ``ON CONFLICT DO NOTHING``, written by an earlier trip, are read back).


@functools.cache
def _final_sql() -> tuple[str, str]:
    qn = connection.ops.quote_name
    message, step, feedback = (qn(m._meta.db_table) for m in (Message, MessageStep, Feedback))
    write = (
        f"WITH s AS (INSERT INTO {step} (message_id, index, content)"
        f" SELECT %(answer)s, t.i, t.c FROM unnest(%(indexes)s::integer[], %(contents)s::text[]) AS t(i, c)"
        f" ON CONFLICT (message_id, index) DO NOTHING)"
        f" UPDATE {message} SET content = %(content)s, status = %(status)s, error = %(error)s,"
        f" token_count = %(token_count)s, duration_ms = %(duration_ms)s,"
        f" time_to_first_token_ms = %(time_to_first_token_ms)s WHERE id = %(answer)s"
    )
    given = "f.id, f.thumbs, f.rating, f.comment, f.tags, f.correction, f.created_at, f.updated_at, f.model_version_id"
    nothing_given = ", ".join(["NULL"] * 9)  # typed by the first SELECT's columns
    read = (
        # 0: each step, with the user's feedback on it; 1: the user's feedback on the answer; 2: the
        # answers to the same turn, failed ones left out (``answer_siblings``).
        f"SELECT 0, st.id, st.index, st.content, {given}, NULL::uuid, NULL::timestamptz"
        f" FROM {step} st LEFT JOIN {feedback} f"
        f" ON f.step_id = st.id AND f.message_id = %(answer)s AND f.user_id = %(user)s"
        f" WHERE st.message_id = %(answer)s"
        f" UNION ALL SELECT 1, NULL, NULL, NULL, {given}, NULL, NULL FROM {feedback} f"
        f" WHERE f.message_id = %(answer)s AND f.user_id = %(user)s AND f.step_id IS NULL"
        f" UNION ALL SELECT 2, NULL, NULL, NULL, {nothing_given}, m.id, m.created_at FROM {message} m"
        f" WHERE m.parent_id = %(parent)s AND m.role = %(assistant)s AND m.status <> %(failed)s"
        f" ORDER BY 1, 3, 15, 14"
    )
    return write, read


_GIVEN = ("id", "thumbs", "rating", "comment", "tags", "correction", "created_at", "updated_at", "model_version_id")


def _answer_store_final_sql(
    *, answer: Message, first_index: int, steps: list[str], shown: bool
) -> list[Message] | None:
    write, read = _final_sql()
    with connection.cursor() as cursor:
        cursor.execute(
            write,
            {
                "answer": answer.pk, "indexes": list(range(first_index, first_index + len(steps))), "contents": steps,
                "content": answer.content, "status": answer.status, "error": answer.error,
                "token_count": answer.token_count, "duration_ms": answer.duration_ms,
                "time_to_first_token_ms": answer.time_to_first_token_ms,
            },
        )  # fmt: skip
    if not shown:
        return None
    user_id = answer.conversation.user_id
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                read,
                {
                    "answer": answer.pk, "user": user_id, "parent": answer.parent_id,
                    "assistant": Message.Role.ASSISTANT, "failed": Message.Status.FAILED,
                },
            )  # fmt: skip
            rows = cursor.fetchall()
    except DatabaseError:
        logger.warning("answer %s is stored; reading it back for the page failed", answer.id, exc_info=True)
        return None
    answer.my_feedback = None  # type: ignore[attr-defined]
    loaded_steps: list[MessageStep] = []
    siblings: list[Message] = []
    for part, step_id, index, content, *given, sibling_id, sibling_at in rows:
        if part == 2:
            sibling = Message.from_db(
                connection.alias, ["id", "parent_id", "role", "created_at"],
                [sibling_id, answer.parent_id, Message.Role.ASSISTANT, sibling_at],
            )  # fmt: skip
            siblings.append(answer if sibling_id == answer.pk else sibling)
            continue
        step = None
        if part == 0:
            step = MessageStep(id=step_id, message=answer, index=index, content=content)
            step._state.adding, step._state.db = False, connection.alias
            loaded_steps.append(step)
        feedback = _feedback_stored(given, user_id=user_id, answer=answer, step=step)
        if step is not None:
            step.my_feedback = feedback  # type: ignore[attr-defined]
        else:
            answer.my_feedback = feedback  # type: ignore[attr-defined]
    # ``answer.steps.all()`` as ``prefetch_related_objects`` leaves it: a queryset holding the rows read.
    answer._prefetched_objects_cache = {}  # type: ignore[attr-defined]
    queryset = answer.steps.get_queryset()
    queryset._result_cache, queryset._prefetch_done = loaded_steps, True  # type: ignore[attr-defined]
    answer._prefetched_objects_cache["steps"] = queryset  # type: ignore[attr-defined]
    return siblings


def _feedback_stored(given: list[Any], *, user_id: int, answer: Message, step: MessageStep | None) -> Feedback | None:
    """The user's feedback from the read's columns (``_GIVEN``), or None where they gave none."""
    values = dict(zip(_GIVEN, given, strict=True))
    if values["id"] is None:
        return None
    tags = values.pop("tags")
    feedback = Feedback(
        user_id=user_id, message=answer, step=step,
        tags=json.loads(tags) if isinstance(tags, str) else tags,  # Django has psycopg read jsonb as text
        **values,
    )  # fmt: skip
    feedback._state.adding, feedback._state.db = False, connection.alias
    return feedback
