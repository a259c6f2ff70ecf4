"""The events of a streamed answer (``ChatEvent``), and ``tokens_batched``: the tokens that come
close together sent as one event, so a fast model's answer takes fewer socket frames."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from django.conf import settings

from feedback.models import Message, MessageStep

logger = logging.getLogger(__name__)

# "streamed": the model has sent its last chunk (steps and the end follow); a reader may ignore it.
EventKind = Literal["start", "token", "step", "streamed", "end"]


@dataclass
class ChatEvent:
    kind: EventKind
    answer: Message
    text: str = ""
    step: MessageStep | None = None
    partial: str = field(default="", repr=False)


OnEvent = Callable[[ChatEvent], Awaitable[None]]


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
