"""The chat's reads and short writes, sync: the consumer and the streamed answer (``stream``) call them
through ``core.asyncdb.db_async``, one trip to a database thread each. Each is its own short
transaction (or, on PostgreSQL, for the send and the answer's end, a single statement that writes
what belongs together); none is held open while the model streams."""

from __future__ import annotations

import logging
import uuid

from django.conf import settings
from django.contrib.auth.models import User
from django.db import DatabaseError, connection, transaction
from django.db.models import Prefetch, prefetch_related_objects

from core import prompts, ratelimit
from feedback import arms
from feedback.arms import Route
from feedback.chat import statements
from feedback.exceptions import FeedbackError, NotFound
from feedback.models import Conversation, Feedback, Message, MessageStep

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
    On PostgreSQL that is two statements (``statements.send_begin``); elsewhere the ORM's transaction."""
    generation_allow(user=user)
    if connection.vendor == "postgresql":
        content = user_turn_clean(content)
        return statements.send_begin(conversation=conversation, content=content, live_version_id=live_version_id)
    with transaction.atomic():
        prompt = user_turn_create(conversation=conversation, content=content)
        begun = generation_begin(prompt=prompt, regenerate_of=None, version_id=None, live_version_id=live_version_id)
    return prompt, begun


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
    if connection.vendor == "postgresql":
        return statements.step_create(answer=answer, index=index, content=content)
    return MessageStep.objects.create(message=answer, index=index, content=content)


def _answer_store_final(*, answer: Message, first_index: int, steps: list[str], shown: bool) -> list[Message] | None:
    """Store the answer as it ended and its steps not stored yet. ``shown``: the page shows it next, so
    in the same trip load its steps onto ``answer`` (``answer.steps.all()``, in order) with the user's
    feedback on them (given while it streamed) and return the answers to the same turn
    (``answer_siblings``): what ``answer_with_siblings`` would read again. None if those reads fail
    (the answer is stored; the caller reads again)."""
    # A stop that lands while a finished step is being stored cannot tell whether its row was written
    # (the thread goes on; the await does not): a step already there is the same text, and is kept.
    if connection.vendor == "postgresql":  # one write, one read (``statements``)
        statements.answer_store_final(answer=answer, first_index=first_index, steps=steps)
        read_back = statements.answer_read_back
    else:
        with transaction.atomic():
            MessageStep.objects.bulk_create(
                [MessageStep(message=answer, index=first_index + i, content=c) for i, c in enumerate(steps)],
                ignore_conflicts=True,
            )
            answer.save(
                update_fields=["content", "status", "error", "token_count", "duration_ms", "time_to_first_token_ms"]
            )
        read_back = _answer_read_back
    if not shown:
        return None
    try:
        return read_back(answer)
    except DatabaseError:
        logger.warning("answer %s is stored; reading it back for the page failed", answer.id, exc_info=True)
        return None


def _answer_read_back(answer: Message) -> list[Message]:
    """What the page shows of an answer just stored: its steps onto ``answer`` with the user's feedback
    on them and on it, and the answers to its turn. Read back, not built from memory: a step kept by
    ``ignore_conflicts`` has the stored row's id."""
    prefetch_related_objects([answer], Prefetch("steps", queryset=MessageStep.objects.order_by("index")))
    _with_my_feedback([answer], user_id=answer.conversation.user_id)
    return answer_siblings(answer=answer)
