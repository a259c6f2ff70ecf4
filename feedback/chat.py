"""The chat turn: store the user's turn, stream the live policy's answer, cut it into steps as they
complete, and store the answer with the version that produced it.

The consumer calls these and renders the events; nothing here knows about sockets or HTML. No
transaction is held open while the model streams: each write is its own short transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Prefetch

from core import prompts, ratelimit
from core.asyncdb import db_async
from feedback import arms, heartbeat, metrics
from feedback.arms import Route
from feedback.exceptions import FeedbackError, NotFound
from feedback.models import Conversation, Feedback, Message, MessageStep
from feedback.steps import split_steps
from models_registry.serving import (
    Sampling,
    ServedPolicy,
    ServingError,
    Usage,
    get_policy,
    get_policy_for,
    served_policy,
)

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

EventKind = Literal["start", "token", "step", "end"]


@dataclass
class ChatEvent:
    kind: EventKind
    answer: Message
    text: str = ""
    step: MessageStep | None = None
    partial: str = field(default="", repr=False)


OnEvent = Callable[[ChatEvent], Awaitable[None]]
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
    answers = [answer for _, group in turns for answer in group]
    given = {
        (f.message_id, f.step_id): f for f in Feedback.objects.filter(user=user, message__in=[a.id for a in answers])
    }
    for answer in answers:
        answer.my_feedback = given.get((answer.id, None))  # type: ignore[attr-defined]
        for step in answer.steps.all():
            step.my_feedback = given.get((answer.id, step.id))  # type: ignore[attr-defined]
    return turns


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
    """Per-user limit on answers started (send and regenerate), CHAT_RATE_PER_MINUTE a minute.
    The counter lives in the cache (Redis when REDIS_URL is set), so it holds across processes;
    with the cache down it allows (``core.ratelimit``)."""
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
    limit, then in one transaction the user's turn and the answer to it begun (``generation_begin``)."""
    generation_allow(user=user)
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
    """``answer_get`` and ``answer_siblings``: what the page shows when an answer ends, in one trip."""
    answer = answer_get(conversation=conversation, answer_id=answer_id)
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
    return MessageStep.objects.create(message=answer, index=index, content=content)


def _answer_store_final(*, answer: Message, first_index: int, steps: list[str]) -> None:
    # A stop that lands while a finished step is being stored cannot tell whether its row was written
    # (the thread goes on; the await does not): a step already there is the same text, and is kept.
    with transaction.atomic():
        MessageStep.objects.bulk_create(
            [MessageStep(message=answer, index=first_index + i, content=c) for i, c in enumerate(steps)],
            ignore_conflicts=True,
        )
        answer.save(
            update_fields=["content", "status", "error", "token_count", "duration_ms", "time_to_first_token_ms"]
        )


# --- The streamed answer ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    """How one answer is generated, beyond the chat's defaults (the inference API sets these).

    ``version_id``: a version asked for by name answers, instead of the conversation's arm, with no
    fallback to the live one. ``stop``: the answer ends before the first of these strings."""

    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    version_id: int | None = None


@dataclass
class _Stream:
    """How far an answer has streamed."""

    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    text: str = ""
    tokens: int = 0
    stored_steps: int = 0  # finished steps handed to a write (all but the one being written)
    usage: Usage = field(default_factory=Usage)
    stopped_by: str = ""  # the stop string that ended the answer, if one did
    # The finished steps' writes not yet announced, oldest first: (index, the write's task).
    step_writes: deque[tuple[int, asyncio.Future[MessageStep]]] = field(default_factory=deque)
    step_failed: int | None = None  # the first step whose write failed or was cut short


async def _policy_for(route: Route, *, strict: bool = False) -> ServedPolicy:
    if route.version_id is None:
        return await get_policy()
    try:
        return await get_policy_for(route.version_id)
    except ServingError as exc:  # a canary that cannot load: the live version answers instead
        if strict:
            raise
        logger.warning("the %s arm cannot answer (%s); the live version answers", route.arm, exc.message)
        return await get_policy()


def live_version_id() -> int | None:
    """The version expected to answer for the live arm: the one this process serves now, without a
    check or a load, so that nothing waits for them before the answer's row is stored (None before the
    first load). ``answer_stream`` corrects the row when another version answers after all."""
    policy = served_policy()
    return policy.version_id if policy is not None else None


async def send_begun(*, user: User, conversation: Conversation, content: str) -> tuple[Message, Begun]:
    """``send_begin`` from async code: the user's turn stored and its answer begun, in one trip."""
    trip = db_async(send_begin)(
        user=user, conversation=conversation, content=content, live_version_id=live_version_id()
    )
    return await _begun_or_stopped(trip, _answer_sent)


async def regeneration_begun(*, user: User, conversation: Conversation, answer_id: uuid.UUID) -> Begun:
    """``regeneration_begin`` from async code: the regeneration begun, in one trip."""
    trip = db_async(regeneration_begin)(
        user=user, conversation=conversation, answer_id=answer_id, live_version_id=live_version_id()
    )
    return await _begun_or_stopped(trip, _answer_begun)


def _answer_begun(begun: Begun) -> Message:
    return begun[2]


def _answer_sent(sent: tuple[Message, Begun]) -> Message:
    return sent[1][2]


async def _begun_or_stopped(trip: Awaitable[_T], answer_of: Callable[[_T], Message]) -> _T:
    """Await a trip that stores an answer as streaming. A stop during it does not stop its thread,
    which goes on and writes the row: that row is then stored ``stopped`` (a ``streaming`` one would
    count as served in the analytics) before the stop goes on."""
    begin = asyncio.ensure_future(trip)
    try:
        return await asyncio.shield(begin)
    except asyncio.CancelledError:
        await asyncio.shield(_stopped_once_begun(begin, answer_of))
        raise


async def answer_generate(
    *, prompt: Message, on_event: OnEvent, regenerate_of: Message | None = None, begun: Begun | None = None
) -> Message:
    """``answer_stream`` with a callback: ``on_event`` is awaited for each event but the last (tokens
    batched, ``tokens_batched``), and the stored answer is returned."""
    answer: Message | None = None
    stream = tokens_batched(answer_stream(prompt=prompt, regenerate_of=regenerate_of, begun=begun))
    async with contextlib.aclosing(stream) as events:
        async for event in events:
            if event.kind == "end":
                answer = event.answer
            else:
                await on_event(event)
    assert answer is not None  # answer_stream always ends with "end"
    return answer


async def tokens_batched(
    events: AsyncGenerator[ChatEvent, None], *, window_ms: float | None = None
) -> AsyncGenerator[ChatEvent, None]:
    """``events`` with the ``token`` events that come within ``window_ms`` (``CHAT_TOKEN_BATCH_MS``) of
    the last one passed on merged into one, so a fast model costs one WebSocket frame or SSE event per
    few milliseconds rather than per token. The first token after a pause is passed on at once (time
    to first token unchanged); the ones behind it wait until the window closes and go as one event.
    Any other event first passes on the tokens held, so the order is kept.

    While tokens are held, the next event is awaited in a task of its own, so the model goes on
    streaming while the window runs. Cancelling the caller, or closing this generator, cancels that
    task: the answer is stored as ``stopped``, as when ``answer_stream`` itself is cancelled."""
    window = (settings.CHAT_TOKEN_BATCH_MS if window_ms is None else window_ms) / 1000
    if window <= 0:
        async with contextlib.aclosing(events):
            async for event in events:
                yield event
        return
    loop = asyncio.get_running_loop()
    held: ChatEvent | None = None
    sent_at = float("-inf")
    pending: asyncio.Future[ChatEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            if held is not None:
                if (wait := sent_at + window - loop.time()) > 0:
                    await asyncio.wait((pending,), timeout=wait)
                if not pending.done():
                    yield held
                    held, sent_at = None, loop.time()
                    continue
            try:
                event = await pending
            except StopAsyncIteration:
                break
            finally:
                if pending.done():
                    pending = None
            if event.kind == "token":
                if held is not None:
                    held = replace(held, text=held.text + event.text)
                elif loop.time() - sent_at >= window:
                    yield event
                    sent_at = loop.time()
                else:
                    held = event
                continue
            if held is not None:
                yield held
                held, sent_at = None, loop.time()
            yield event
        if held is not None:
            yield held
    finally:
        if pending is not None:
            if not pending.done():
                pending.cancel()  # the answer is stored as stopped
            # Waits for the stream's own clean-up (storing the answer) without passing on a second
            # cancel of this reader, which would cut that clean-up short.
            await asyncio.wait((pending,))
            if not pending.cancelled() and not isinstance(pending.exception(), StopAsyncIteration | None):
                logger.error("the answer's stream failed while it was closed", exc_info=pending.exception())
        await events.aclose()


async def answer_stream(
    *,
    prompt: Message,
    regenerate_of: Message | None = None,
    generation: Generation | None = None,
    begun: Begun | None = None,
) -> AsyncGenerator[ChatEvent, None]:
    """Stream an answer to ``prompt`` from the live policy (or the conversation's canary arm, or the
    version ``generation`` names): a ``start`` event once the answer is stored, a ``token`` event per
    chunk, a ``step`` event per finished step, and last an ``end`` event with the stored answer (its
    ``usage`` attribute: the token counts). Cancelling the consuming task, or closing this generator,
    stops generation and stores what was produced, marked ``stopped``; a serving failure stores the
    answer as ``failed`` with the error. ``regenerate_of``: the answer this one is a regeneration of.
    Until the answer is stored as it ended, it is marked alive every CHAT_HEARTBEAT_SECONDS, so that
    the reaper can tell an answer whose process died (``feedback.heartbeat``). ``begun``: the answer
    already begun by the caller's own trip (``send_begun``, ``regeneration_begun``); else this
    begins it (``generation_begin``), one trip to a database thread before the model is asked."""
    generation = generation or Generation()
    if begun is None:
        trip = db_async(generation_begin)(
            prompt=prompt,
            regenerate_of=regenerate_of,
            version_id=generation.version_id,
            live_version_id=live_version_id() if generation.version_id is None else None,
        )
        begun = cast(Begun, await _begun_or_stopped(trip, _answer_begun))
    history, route = begun[0], begun[1]
    answer: Any = begun[2]  # Any: given ``usage`` and ``served_by`` below
    beat = asyncio.ensure_future(heartbeat.beating(answer.id))  # till the answer is stored as it ended
    try:
        try:
            policy = await _policy_for(route, strict=generation.version_id is not None)
            if policy.version_id != answer.model_version_id:  # a canary that could not load: the live one answers
                answer.model_version_id = policy.version_id
                await db_async(answer.save)(update_fields=["model_version"])
        except ServingError as exc:
            logger.warning("no policy to answer with: %s", exc.message)
            await db_async(_answer_fail)(answer=answer, error=exc.message)
            answer.usage = Usage()
            beat.cancel()
            yield ChatEvent("end", answer)
            return
        except asyncio.CancelledError:  # stopped while a version was loading: nothing was generated
            await asyncio.shield(_finish(answer, _Stream(), status=Message.Status.STOPPED, error="", label=""))
            raise
        answer.served_by = policy.label
        stream = _Stream()
        status, error = Message.Status.COMPLETE, ""
        metrics.ACTIVE_STREAMS.labels(policy.label).inc()
        try:
            # Inside: a stop or a close while the caller handles the start stores the answer stopped too.
            yield ChatEvent("start", answer)
            chunks = policy.stream(history, options=generation.sampling, usage=stream.usage)
            async with contextlib.aclosing(_until_stop(chunks, generation.stop, stream)) as pieces:
                async for chunk in pieces:
                    async for event in _take(chunk, answer, stream):
                        yield event
            async for event in _steps_written(answer, stream, wait=True):
                yield event
        except ServingError as exc:
            status, error = Message.Status.FAILED, exc.message
        except (asyncio.CancelledError, GeneratorExit):
            status = Message.Status.STOPPED
            raise
        except Exception:
            logger.exception("generation of answer %s failed", answer.id)
            status, error = Message.Status.FAILED, "The answer could not be generated; the error has been logged."
        finally:
            metrics.ACTIVE_STREAMS.labels(policy.label).dec()
            # Shielded: a stop or a closed socket must not lose what was produced.
            await asyncio.shield(_finish(answer, stream, status=status, error=error, label=policy.label))
        answer.usage = stream.usage
        beat.cancel()
        yield ChatEvent("end", answer)
    finally:
        beat.cancel()


async def answer_stopped(answer: Message) -> None:
    """Store an answer begun but never streamed (its caller went before the model was asked) as
    ``stopped``, with nothing produced."""
    await _finish(answer, _Stream(), status=Message.Status.STOPPED, error="", label="")


async def _stopped_once_begun(begin: asyncio.Future[_T], answer_of: Callable[[_T], Message]) -> None:
    """A stop during the answer's first trip: once the trip's thread has written the answer row, store
    it ``stopped`` (it must not stay ``streaming``: it would count as served in the analytics)."""
    try:
        answer = answer_of(await begin)
    except FeedbackError:  # refused (too fast, not found): no answer was begun
        return
    except Exception:
        logger.exception("the answer's first database trip failed after a stop")
        return
    await answer_stopped(answer)


async def _until_stop(chunks: AsyncIterator[str], stop: tuple[str, ...], stream: _Stream) -> AsyncGenerator[str, None]:
    """``chunks`` up to (not including) the first ``stop`` string. Text that may be the start of a
    stop string is held back until the next chunk shows it is not."""
    if not stop:
        async with contextlib.aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk
        return
    pending = ""
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            pending += chunk
            found = [(pending.find(s), s) for s in stop if s in pending]
            if found:
                at, which = min(found)
                stream.stopped_by = which
                if pending[:at]:
                    yield pending[:at]
                return  # closing ``chunks`` stops the model
            held = _stop_prefix_length(pending, stop)
            if len(pending) > held:
                yield pending[: len(pending) - held]
                pending = pending[len(pending) - held :]
    if pending:
        yield pending


def _stop_prefix_length(text: str, stop: tuple[str, ...]) -> int:
    """The length of the longest end of ``text`` that begins one of the ``stop`` strings."""
    return max((k for s in stop for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), default=0)


async def _take(chunk: str, answer: Message, stream: _Stream) -> AsyncGenerator[ChatEvent, None]:
    """One chunk of the answer: pass it on, and store each step that it completes.

    A finished step is written in the background, so the tokens behind it are not held up by the
    database trip (measured: a tenth of a fast model's tokens/s through the socket); its ``step``
    event follows once the row exists (a step can be rated from then on), in order."""
    if stream.first_token_at is None:
        stream.first_token_at = time.monotonic()
    stream.tokens += 1
    stream.text += chunk
    yield ChatEvent("token", answer, text=chunk)
    steps = split_steps(stream.text)
    for index in range(stream.stored_steps, len(steps) - 1):  # all but the step being written are final
        write = asyncio.ensure_future(db_async(_step_create)(answer=answer, index=index, content=steps[index]))
        stream.step_writes.append((index, write))
    stream.stored_steps = max(stream.stored_steps, len(steps) - 1)
    async for event in _steps_written(answer, stream, wait=False):
        yield event


async def _steps_written(answer: Message, stream: _Stream, *, wait: bool) -> AsyncGenerator[ChatEvent, None]:
    """A ``step`` event for each finished step whose write is done (``wait``: for all of them), in
    order; ``partial`` is what follows that step so far (the page's live text after it)."""
    steps: list[str] | None = None  # the text does not change while this runs: split it once
    while stream.step_writes and (wait or stream.step_writes[0][1].done()):
        index, write = stream.step_writes[0]
        step = await write
        stream.step_writes.popleft()
        steps = split_steps(stream.text) if steps is None else steps
        yield ChatEvent("step", answer, step=step, partial="\n".join(steps[index + 1 :]))


async def _steps_settled(stream: _Stream) -> None:
    """Wait for the step writes still running; note the first that failed or was cut short."""
    for index, write in stream.step_writes:
        await asyncio.wait((write,))
        if (write.cancelled() or write.exception() is not None) and stream.step_failed is None:
            stream.step_failed = index
    stream.step_writes.clear()


async def _finish(answer: Message, stream: _Stream, *, status: str, error: str, label: str) -> None:
    """Store the answer as it ended (its text, the steps not stored yet, status and timings)."""
    finished = time.monotonic()
    answer.content, answer.status, answer.error = stream.text, status, error
    # The backend's count of generated tokens when it gives one (a stop string cuts the text short of
    # what was generated, so then the chunks passed on are counted); else the chunks.
    counted = stream.usage.completion_tokens
    answer.token_count = counted if counted is not None and not stream.stopped_by else stream.tokens
    answer.duration_ms = int((finished - stream.started) * 1000)
    first = stream.first_token_at
    answer.time_to_first_token_ms = int((first - stream.started) * 1000) if first is not None else None
    await _steps_settled(stream)
    first_index = stream.stored_steps if stream.step_failed is None else stream.step_failed
    remaining = split_steps(stream.text)[first_index:]
    await db_async(_answer_store_final)(answer=answer, first_index=first_index, steps=remaining)
    if first is not None:
        metrics.record_generation(
            model_version=label, ttft=first - stream.started, tokens=stream.tokens, seconds=finished - first
        )
