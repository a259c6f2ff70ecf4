"""The streamed answer: begin it (one trip: ``turns.send_begin``, ``turns.regeneration_begin`` or
``turns.generation_begin``), stream the policy's tokens, cut them into steps as they complete and
store each in the background, and store the answer as it ended (complete, stopped or failed) with the
version that produced it. Nothing here knows about sockets or HTML."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from django.contrib.auth.models import User

from core.asyncdb import db_async
from feedback import heartbeat, metrics
from feedback.arms import Route
from feedback.chat.events import ChatEvent, OnEvent, tokens_batched
from feedback.chat.turns import (
    Begun,
    _answer_fail,
    _answer_store_final,
    _step_create,
    generation_begin,
    regeneration_begin,
    send_begin,
)
from feedback.exceptions import FeedbackError
from feedback.models import Conversation, Message, MessageStep
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
    return await begun_or_stopped(trip, _answer_sent)


async def regeneration_begun(*, user: User, conversation: Conversation, answer_id: uuid.UUID) -> Begun:
    """``regeneration_begin`` from async code: the regeneration begun, in one trip."""
    trip = db_async(regeneration_begin)(
        user=user, conversation=conversation, answer_id=answer_id, live_version_id=live_version_id()
    )
    return await begun_or_stopped(trip, _answer_begun)


def _answer_begun(begun: Begun) -> Message:
    return begun[2]


def _answer_sent(sent: tuple[Message, Begun]) -> Message:
    return sent[1][2]


async def begun_or_stopped(trip: Awaitable[_T], answer_of: Callable[[_T], Message]) -> _T:
    """Await a trip that stores an answer as streaming (``answer_of`` finds it in the trip's result).
    A stop during it does not stop its thread, which goes on and writes the row: that row is then
    stored ``stopped`` (a ``streaming`` one would count as served in the analytics) before the stop
    goes on."""
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
    batched, ``tokens_batched``), and the stored answer is returned, with what the page shows of it
    loaded (``shown``)."""
    answer: Message | None = None
    stream = tokens_batched(answer_stream(prompt=prompt, regenerate_of=regenerate_of, begun=begun, shown=True))
    async with contextlib.aclosing(stream) as events:
        async for event in events:
            if event.kind == "end":
                answer = event.answer
            else:
                await on_event(event)
    assert answer is not None  # answer_stream always ends with "end"
    return answer


async def answer_stream(
    *,
    prompt: Message,
    regenerate_of: Message | None = None,
    generation: Generation | None = None,
    begun: Begun | None = None,
    shown: bool = False,
) -> AsyncGenerator[ChatEvent, None]:
    """Stream an answer to ``prompt`` from the live policy (or the conversation's canary arm, or the
    version ``generation`` names): a ``start`` event once the answer is stored, a ``token`` event
    per chunk, a ``step`` event per finished step, a ``streamed`` event once the model has sent its
    last chunk (the steps still being stored and the end follow), and last an ``end`` event with the
    stored answer (its ``usage`` attribute: the token counts). Cancelling the consuming task, or
    closing this generator, stops generation and stores what was produced, marked ``stopped``; a
    serving failure stores the answer as ``failed`` with the error. ``regenerate_of``: the answer
    this one is a regeneration of. Until the answer is stored as it ended, it is marked alive every
    CHAT_HEARTBEAT_SECONDS, so that the reaper can tell an answer whose process died
    (``feedback.heartbeat``). ``begun``: the answer already begun by the caller's own trip
    (``send_begun``, ``regeneration_begun``); else this begins it (``generation_begin``), one trip
    to a database thread before the model is asked. ``shown``: the page shows the answer as it
    ended, so the trip that stores it also loads its steps (``answer.steps.all()``) and sets
    ``answer.siblings``, the answers to the same turn, for a streamed answer (one trip less than
    reading them again; an answer that failed before streaming has none)."""
    generation = generation or Generation()
    if begun is None:
        trip = db_async(generation_begin)(
            prompt=prompt,
            regenerate_of=regenerate_of,
            version_id=generation.version_id,
            live_version_id=live_version_id() if generation.version_id is None else None,
        )
        begun = cast(Begun, await begun_or_stopped(trip, _answer_begun))
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
            # Before the steps' writes are awaited and the answer is stored: a batcher passes on the
            # tokens it holds now, not when its window closes (the answer's last words, sooner).
            yield ChatEvent("streamed", answer)
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
            # A stopped answer is not shown from here (the stop's own handler shows it): no read-back.
            shown_now = shown and status != Message.Status.STOPPED
            answer.siblings = await asyncio.shield(
                _finish(answer, stream, status=status, error=error, label=policy.label, shown=shown_now)
            )
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


async def _finish(
    answer: Message, stream: _Stream, *, status: str, error: str, label: str, shown: bool = False
) -> list[Message] | None:
    """Store the answer as it ended (its text, the steps not stored yet, status and timings); with
    ``shown``, load what the page shows of it in the same trip (``_answer_store_final``)."""
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
    siblings = await db_async(_answer_store_final)(answer=answer, first_index=first_index, steps=remaining, shown=shown)
    if first is not None:
        metrics.record_generation(
            model_version=label, ttft=first - stream.started, tokens=stream.tokens, seconds=finished - first
        )
    return siblings
