"""The chat's busiest database work on PostgreSQL, in few statements: a send, a finished step and an
answer's end (``turns`` calls these when ``connection.vendor`` is PostgreSQL; on SQLite it keeps the
ORM's transactions, and ``tests/test_chat_statements.py`` compares the two).

Through the ORM a send was seven round trips in a transaction (BEGIN, the user's turn, the title, the
history, the canary, the answer, COMMIT) and an answer's end seven more (BEGIN, the steps left, the
answer, COMMIT, then its steps, the user's feedback and the answers to its turn), about 1 ms of server
CPU each on every message of every chat (``bench/chat_overhead.py``). Here each is two statements;
what belongs together is written by one statement (data-modifying CTEs), so together or not at all.
"""

from __future__ import annotations

import datetime
import functools
import uuid
from typing import Any

from django.db import DatabaseError, connection
from django.utils import timezone

from core import prompts
from feedback import arms
from feedback.arms import Route
from feedback.exceptions import NotFound
from feedback.models import Conversation, Feedback, Message, MessageStep
from feedback.rows import FEEDBACK_COLUMNS, feedback_from, stored
from models_registry.models import Canary, ModelVersion

_USER, _ASSISTANT = Message.Role.USER.value, Message.Role.ASSISTANT.value
_COMPLETE, _STREAMING = Message.Status.COMPLETE.value, Message.Status.STREAMING.value


def _quoted(*models: Any) -> list[str]:
    return [connection.ops.quote_name(model._meta.db_table) for model in models]


def _columns(alias: str, fields: Any) -> str:
    """``fields``' columns of the table ``alias`` names, quoted, in order."""
    return ", ".join(f"{alias}.{connection.ops.quote_name(f.column)}" for f in fields)


# --- A send: one read, one write -----------------------------------------------------------------
# The read: the conversation so far, with the running policy canary (``running_canary_row``'s rule)
# and the conversation's stored title joined onto each row. The write: the user's turn, the answer
# begun and a first turn's title. The history is the rows and the new turn by the rule the processor
# trains on (``turns.history_for`` on the stored rows); the route is ``arms.route_in``'s, which in a
# canary conversation's first send stores its arm by a statement of its own (deterministic: any
# process draws the same, so one stored without the turn is what the next send would store).


@functools.cache
def _send_sql() -> tuple[str, str, list[str]]:
    """The read, the write, and the canary's attribute names in the read's column order."""
    canary_fields = list(Canary._meta.concrete_fields)  # its primary key first
    canary_columns = _columns("c", canary_fields)
    message, canary, conversation = _quoted(Message, Canary, Conversation)
    read = (
        f"SELECT {canary_columns}, cv.title, m.created_at, m.id, m.role, m.content, m.parent_id, m.status"
        f" FROM {conversation} cv"
        f" LEFT JOIN {canary} c ON c.kind = %(kind)s AND c.outcome = %(running)s"
        f" LEFT JOIN {message} m ON m.conversation_id = cv.id"
        f" WHERE cv.id = %(conversation)s"
        f" ORDER BY m.created_at, m.id"
    )
    columns = "id, conversation_id, role, content, parent_id, model_version_id, status, error, created_at"
    write = (
        f"WITH u AS (INSERT INTO {message} ({columns})"
        f" VALUES (%(prompt)s, %(conversation)s, %(user)s, %(content)s, NULL, NULL, %(complete)s, '', %(prompt_at)s)"
        f" RETURNING heartbeat_at),"
        f" a AS (INSERT INTO {message} ({columns})"
        f" VALUES (%(answer)s, %(conversation)s, %(assistant)s, '', %(prompt)s, %(version)s, %(streaming)s, '',"
        f" %(answer_at)s)),"
        f" t AS (UPDATE {conversation} SET title = %(title)s WHERE id = %(conversation)s AND title = ''"
        f" RETURNING title)"
        f" SELECT u.heartbeat_at, (SELECT title FROM t) FROM u"
    )
    return read, write, [f.attname for f in canary_fields]


def send_begin(
    *, conversation: Conversation, content: str, live_version_id: int | None
) -> tuple[Message, tuple[list[dict[str, str]], Route, Message]]:
    """``turns.send_begin`` after its rate limit, ``content`` cleaned: the user's turn stored and the
    answer to it begun, with what the model is sent and the route."""
    read, write, canary_names = _send_sql()
    with connection.cursor() as cursor:
        cursor.execute(
            read, {"kind": ModelVersion.Kind.POLICY, "running": Canary.Outcome.RUNNING, "conversation": conversation.pk}
        )
        rows = cursor.fetchall()
    if not rows:  # deleted since the socket opened (the ORM's write would fail on its foreign key)
        raise NotFound("This conversation no longer exists.")
    width = len(canary_names)
    canary = Canary.from_db(connection.alias, canary_names, rows[0][:width]) if rows[0][0] is not None else None
    stored_title = rows[0][width]
    prompt_id, answer_id = uuid.uuid4(), uuid.uuid4()
    # Two stamps in order: the page and the history order a conversation by (created_at, id).
    prompt_at = timezone.now()
    answer_at = max(timezone.now(), prompt_at + datetime.timedelta(microseconds=1))
    # The new turn placed among the rows read by (created_at, id), as PostgreSQL orders them (uuids
    # byte by byte, as Python compares them).
    stamped = [row[width + 1 :] for row in rows if row[width + 2] is not None]
    stamped.append((prompt_at, prompt_id, _USER, content, None, _COMPLETE))
    stamped.sort(key=lambda row: (row[0], row[1]))
    turns = prompts.conversation_turns([row[1:] for row in stamped])
    turn = next(turn for turn in turns if turn.user[0] == prompt_id)
    route = arms.route_in(canary, conversation=conversation)
    expected = route.version_id if route.version_id is not None else live_version_id
    with connection.cursor() as cursor:
        cursor.execute(
            write,
            {
                "prompt": prompt_id, "answer": answer_id, "conversation": conversation.pk, "content": content,
                "user": _USER, "assistant": _ASSISTANT, "version": expected,
                "complete": _COMPLETE, "streaming": _STREAMING,
                "prompt_at": prompt_at, "answer_at": answer_at, "title": content[:60],
            },
        )  # fmt: skip
        heartbeat_at, titled = cursor.fetchone()
    # In memory too, as stored (the socket keeps this object for its next sends): the title this turn
    # gave, else the one the conversation had (perhaps from another socket since this one opened).
    conversation.title = titled if titled is not None else stored_title
    prompt = _message_stored(
        id=prompt_id, conversation=conversation, role=_USER, content=content, parent=None,
        model_version_id=None, status=_COMPLETE, created_at=prompt_at, heartbeat_at=heartbeat_at,
    )  # fmt: skip
    answer = _message_stored(
        id=answer_id, conversation=conversation, role=_ASSISTANT, content="", parent=prompt,
        model_version_id=expected, status=_STREAMING, created_at=answer_at, heartbeat_at=heartbeat_at,
    )  # fmt: skip
    return prompt, (prompts.as_chat(turn.context), route, answer)


def _message_stored(**fields: Any) -> Message:
    """A ``Message`` as the ORM would hold it after its ``create``, for a row written by SQL."""
    return stored(Message(
        **fields, error="", source=Message.Source.PLATFORM.value, external_model="",
        token_count=None, time_to_first_token_ms=None, duration_ms=None,
    ))  # fmt: skip


# --- A finished step -----------------------------------------------------------------------------


@functools.cache
def _step_sql() -> str:
    (table,) = _quoted(MessageStep)
    return f"INSERT INTO {table} (message_id, index, content) VALUES (%s, %s, %s) RETURNING id"


def step_create(*, answer: Message, index: int, content: str) -> MessageStep:
    """A finished step's row by one ``INSERT`` made once, not compiled by the ORM per row (0.28 against
    0.19 ms of the database thread's CPU here, five or so times an answer)."""
    with connection.cursor() as cursor:
        cursor.execute(_step_sql(), (answer.pk, index, content))
        (step_id,) = cursor.fetchone()
    return stored(MessageStep(id=step_id, message=answer, index=index, content=content))


# --- An answer's end: one write, one read --------------------------------------------------------
# The write: the steps left (``ON CONFLICT DO NOTHING``: one a stopped trip wrote is kept) and the
# answer. The read, after it (so a step kept by the conflict is read back), when the page shows the
# answer: its steps with the user's feedback on each, the user's feedback on the answer, and the
# answers to its turn (``turns.answer_siblings``: failed ones left out), as parts of one UNION ALL.


@functools.cache
def _final_sql() -> tuple[str, str]:
    message, step, feedback = _quoted(Message, MessageStep, Feedback)
    write = (
        f"WITH s AS (INSERT INTO {step} (message_id, index, content)"
        f" SELECT %(answer)s, t.i, t.c FROM unnest(%(indexes)s::integer[], %(contents)s::text[]) AS t(i, c)"
        f" ON CONFLICT (message_id, index) DO NOTHING)"
        f" UPDATE {message} SET content = %(content)s, status = %(status)s, error = %(error)s,"
        f" token_count = %(token_count)s, duration_ms = %(duration_ms)s,"
        f" time_to_first_token_ms = %(time_to_first_token_ms)s WHERE id = %(answer)s"
    )
    given = ", ".join(f"f.{name}" for name in FEEDBACK_COLUMNS)
    no_given = ", ".join(["NULL"] * len(FEEDBACK_COLUMNS))
    # The first SELECT types every column (a NULL in two UNION ALL parts before a typed one would be
    # read as text and then fail to match it).
    sibling_fields = Message._meta.concrete_fields
    no_sibling = ", ".join(f"NULL::{f.db_type(connection)}" for f in sibling_fields)
    siblings = _columns("m", sibling_fields)
    nothing = ", ".join(["NULL"] * len(sibling_fields))
    names = [f.attname for f in sibling_fields]
    created, pk = (2 + 3 + len(FEEDBACK_COLUMNS) + names.index(n) for n in ("created_at", "id"))
    read = (
        f"SELECT 0, st.id, st.index, st.content, {given}, {no_sibling}"
        f" FROM {step} st LEFT JOIN {feedback} f"
        f" ON f.step_id = st.id AND f.message_id = %(answer)s AND f.user_id = %(user)s"
        f" WHERE st.message_id = %(answer)s"
        f" UNION ALL SELECT 1, NULL, NULL, NULL, {given}, {nothing} FROM {feedback} f"
        f" WHERE f.message_id = %(answer)s AND f.user_id = %(user)s AND f.step_id IS NULL"
        f" UNION ALL SELECT 2, NULL, NULL, NULL, {no_given}, {siblings} FROM {message} m"
        f" WHERE m.parent_id = %(parent)s AND m.role = %(assistant)s AND m.status <> %(failed)s"
        f" ORDER BY 1, 3, {created}, {pk}"  # part; a step's index; a sibling's (created_at, id)
    )
    return write, read


def answer_store_final(*, answer: Message, first_index: int, steps: list[str]) -> None:
    """``turns._answer_store_final``'s write: the steps left and the answer, in one statement."""
    write, _ = _final_sql()
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
        if cursor.rowcount != 1:  # as the ORM's save(update_fields=...) says of a row gone
            raise DatabaseError(f"Answer {answer.pk} was not stored: its row is gone.")


def answer_read_back(answer: Message) -> list[Message]:
    """``turns._answer_read_back`` in one read (see above; the answer's own row in the siblings is
    ``answer``)."""
    _, read = _final_sql()
    user_id = answer.conversation.user_id
    with connection.cursor() as cursor:
        cursor.execute(
            read,
            {
                "answer": answer.pk, "user": user_id, "parent": answer.parent_id,
                "assistant": _ASSISTANT, "failed": Message.Status.FAILED.value,
            },
        )  # fmt: skip
        rows = cursor.fetchall()
    answer.my_feedback = None  # type: ignore[attr-defined]
    loaded: list[MessageStep] = []
    siblings: list[Message] = []
    names = [f.attname for f in Message._meta.concrete_fields]
    for part, step_id, index, content, *rest in rows:
        given, sibling = rest[: len(FEEDBACK_COLUMNS)], rest[len(FEEDBACK_COLUMNS) :]
        if part == 2:
            row = Message.from_db(connection.alias, names, sibling)
            siblings.append(answer if row.pk == answer.pk else row)
            continue
        step = None
        if part == 0:
            step = stored(MessageStep(id=step_id, message=answer, index=index, content=content))
            loaded.append(step)
        feedback = feedback_from(given, user_id=user_id, message=answer, step=step)
        if step is not None:
            step.my_feedback = feedback  # type: ignore[attr-defined]
        else:
            answer.my_feedback = feedback  # type: ignore[attr-defined]
    # ``answer.steps.all()`` as ``prefetch_related_objects`` leaves it: a queryset holding the rows read.
    cache = answer.__dict__.setdefault("_prefetched_objects_cache", {})
    cache.pop("steps", None)
    queryset = answer.steps.get_queryset()
    queryset._result_cache, queryset._prefetch_done = loaded, True  # type: ignore[attr-defined]
    cache["steps"] = queryset
    return siblings
