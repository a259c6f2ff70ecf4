"""The chat WebSocket: auth, routing a message type to a service, and rendering HTML fragments for
htmx's ws extension (each fragment is swapped out-of-band by id).

Client messages are JSON objects with a ``type``:
``send`` {content}, ``regenerate`` {message_id}, ``stop``, ``feedback`` {message_id, step_index?,
thumbs?, rating?, comment?, tags?, correction?}, ``compare`` {prompt_message_id, chosen_message_id,
rejected_message_id, is_tie?}. Bad input is answered with an error fragment; the socket stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.template import engines
from django.template.loader import get_template, render_to_string
from django.utils.html import escape
from rest_framework.exceptions import ValidationError

from core import jsonsafe
from core.asyncdb import db_async
from feedback import chat, selectors, services
from feedback.exceptions import FeedbackError
from feedback.models import Message
from feedback.serializers import ComparisonInputSerializer, FeedbackInputSerializer

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_RATE_LIMITED = 4429
# Frames that write a row each; limited per user by CHAT_SOCKET_RATE (sends have CHAT_RATE_PER_MINUTE).
RATE_LIMITED = frozenset({"feedback", "compare"})
MAX_FRAME_BYTES = 64 * 1024


FRAGMENTS = "chat/_*.html"  # what the socket renders, and what those include


def fragments_compile() -> list[str]:
    """Compile the chat's fragment templates into the template cache (Django's cached loader, on by
    default since Django 4.1) and return their names. A server process does it as it starts
    (``rlhf_site.lifespan``); otherwise its first answers compile them, on the event loop."""
    roots = [Path(root) for root in engines["django"].engine.dirs]
    names = sorted({path.relative_to(root).as_posix() for root in roots for path in root.glob(FRAGMENTS)})
    for name in names:
        get_template(name)
    return names


class TokenFrames:
    """The token fragments of one answer, ``chat/_token.html`` rendered once with a marker for the
    text and then filled in: a frame per few tokens is most of what the socket sends, and a template
    render costs about 37 us against 2 for this (same bytes: the template escapes the text as
    ``escape`` does). A template whose text cannot be told apart falls back to rendering each one."""

    def __init__(self, answer: Message) -> None:
        self.answer = answer
        mark = uuid.uuid4().hex
        before, found, after = render_to_string("chat/_token.html", {"answer": answer, "text": mark}).partition(mark)
        self.parts = (before, after) if found and mark not in after else None

    def frame(self, text: str) -> str:
        if self.parts is None:
            return render_to_string("chat/_token.html", {"answer": self.answer, "text": text})
        return f"{self.parts[0]}{escape(text)}{self.parts[1]}"


def _first_error(exc: ValidationError) -> str:
    detail = exc.detail
    if isinstance(detail, dict):
        name, messages = next(iter(detail.items()))
        message = messages[0] if isinstance(messages, list) else messages
        return str(message) if name == "non_field_errors" else f"{name}: {message}"
    return str(detail[0] if isinstance(detail, list) else detail)


def _form_values(payload: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """Form fields arrive as strings; an empty one means 'not given'. Tags may be one or many."""
    values = {k: v for k, v in payload.items() if k in fields and v not in ("", None)}
    if "tags" in values and isinstance(values["tags"], str):
        values["tags"] = [values["tags"]]
    if "is_tie" in values and isinstance(values["is_tie"], str):
        values["is_tie"] = values["is_tie"].lower() in {"1", "true", "on", "yes"}
    return values


class ChatConsumer(AsyncWebsocketConsumer):
    # Nothing is sent to this consumer through the channel layer (no groups), so it does not listen
    # on one: with Redis, each open socket would otherwise hold a blocking read that times out, and
    # drops the socket, whenever the event loop stalls (measured with 200 chats in bench/chat_load.py).
    channel_layer_alias = "chat-consumer-uses-no-channel-layer"

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.generation: asyncio.Task[None] | None = None
        self.unstarted: Message | None = None  # the answer begun for a generation task not started yet
        self.streaming_answer_id: uuid.UUID | None = None
        self.token_frames: TokenFrames | None = None  # the streaming answer's
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            conversation_id = uuid.UUID(str(self.scope["url_route"]["kwargs"]["conversation_id"]))
        except ValueError:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.conversation = await db_async(chat.conversation_for_user)(user=self.user, conversation_id=conversation_id)
        if self.conversation is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self._cancel_generation()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None or len(text_data.encode()) > MAX_FRAME_BYTES:
            await self.send_error("Messages must be JSON text of at most 64 KiB.")
            return
        try:
            payload = jsonsafe.loads(text_data)
        except jsonsafe.UnsafeJSON as exc:
            # Also a lone surrogate ("\ud800"), NaN or deep nesting: refused here, the socket stays open.
            invalid = str(exc).startswith("is not valid JSON")
            await self.send_error("That was not valid JSON." if invalid else f"That message {exc}.")
            return
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            await self.send_error("Each message must be a JSON object with a 'type'.")
            return
        handler = {
            "send": self.on_send,
            "regenerate": self.on_regenerate,
            "stop": self.on_stop,
            "feedback": self.on_feedback,
            "compare": self.on_compare,
        }.get(payload["type"])
        if handler is None:
            await self.send_error(f"Unknown message type {payload['type'][:40]!r}.")
            return
        allow = db_async(chat.socket_frame_allow)
        if payload["type"] in RATE_LIMITED and not await allow(user=self.user):
            await self.send_error("You are sending feedback too fast, so this connection is closed. Reload the page.")
            await self.close(code=CLOSE_RATE_LIMITED)
            return
        # A send refused or failed: the page emptied its composer on sending, so the text goes back into it.
        sent = payload.get("content") if payload["type"] == "send" else None
        restore = sent if isinstance(sent, str) else None
        try:
            await handler(payload)
        except ValidationError as exc:
            await self.send_error(_first_error(exc), restore=restore)
        except FeedbackError as exc:
            await self.send_error(exc.message, restore=restore)
        except Exception:
            logger.exception("chat message failed")
            await self.send_error("Something went wrong on our side; it has been logged.", restore=restore)

    # --- Handlers ---------------------------------------------------------------------------------

    async def on_send(self, payload: dict[str, Any]) -> None:
        content = chat.user_turn_clean(payload.get("content"))
        self._refuse_if_busy()
        prompt, begun = await chat.send_begun(user=self.user, conversation=self.conversation, content=content)
        try:
            await self.send_html("chat/_turn_new.html", {"prompt": prompt})
        except BaseException:  # the socket went: the answer begun is stored stopped, not left streaming
            await asyncio.shield(chat.answer_stopped(begun[2]))
            raise
        self._start_generation(begun)

    async def on_regenerate(self, payload: dict[str, Any]) -> None:
        answer_id = self._uuid(payload, "message_id")
        self._refuse_if_busy()
        begun = await chat.regeneration_begun(user=self.user, conversation=self.conversation, answer_id=answer_id)
        self._start_generation(begun)

    async def on_stop(self, payload: dict[str, Any]) -> None:
        answer_id = self.streaming_answer_id
        if await self._cancel_generation() and answer_id is not None:
            await self._send_final(answer_id)

    async def on_feedback(self, payload: dict[str, Any]) -> None:
        fields = ("message_id", "step_index", "thumbs", "rating", "comment", "tags", "correction")
        serializer = FeedbackInputSerializer(data=_form_values(payload, fields))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        result = await db_async(services.feedback_upsert)(
            user=self.user,
            message_id=data["message_id"],
            step_index=data.get("step_index"),
            **{name: data[name] for name in ("thumbs", "rating", "comment", "tags", "correction") if name in data},
        )
        template = "chat/_step_feedback.html" if result.feedback.step else "chat/_answer_feedback.html"
        await self.send_html(
            template,
            {
                "answer_id": result.feedback.message_id,
                "answer_text": result.feedback.message.content,
                "step": result.feedback.step,
                "feedback": result.feedback,
                "satisfaction": result.satisfaction,
                "confirm": True,
            },
        )

    async def on_compare(self, payload: dict[str, Any]) -> None:
        fields = ("prompt_message_id", "chosen_message_id", "rejected_message_id", "is_tie")
        serializer = ComparisonInputSerializer(data=_form_values(payload, fields))
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        comparison, _ = await db_async(services.comparison_record)(
            user=self.user,
            prompt_id=data["prompt_message_id"],
            chosen_id=data["chosen_message_id"],
            rejected_id=data["rejected_message_id"],
            is_tie=data["is_tie"],
        )
        satisfaction = await db_async(selectors.satisfaction_get)(user=self.user)
        await self.send_html("chat/_compare.html", {"comparison": comparison, "prompt_id": comparison.prompt_id,
                                                    "satisfaction": satisfaction, "confirm": True})  # fmt: skip

    # --- Generation -------------------------------------------------------------------------------

    def _refuse_if_busy(self) -> None:
        if self.generation is not None and not self.generation.done():
            raise FeedbackError("Wait for the answer to finish, or press Stop.", code="busy")

    def _start_generation(self, begun: chat.Begun) -> None:
        self.unstarted = begun[2]  # until _generate runs: its stream then owns the answer
        self.generation = asyncio.create_task(self._generate(begun))

    async def _generate(self, begun: chat.Begun) -> None:
        self.unstarted = None
        answer = begun[2]
        assert answer.parent is not None  # an answer's row names its user turn
        try:
            answer = await chat.answer_generate(prompt=answer.parent, on_event=self._on_chat_event, begun=begun)
            # An answer that failed before streaming is not on the page yet: append it rather than replace it.
            new = self.streaming_answer_id != answer.id
            siblings = getattr(answer, "siblings", None)  # loaded as the answer was stored, if it streamed
            if siblings is None:
                await self._send_final(answer.id, new=new)
            else:
                await self._send_answer(answer, siblings, new=new)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("generation failed")
            await self.send_error("The answer could not be generated; it has been logged.")
        finally:
            self.streaming_answer_id = None

    async def _on_chat_event(self, event: chat.ChatEvent) -> None:
        if event.kind == "start":
            self.streaming_answer_id = event.answer.id
            self.token_frames = TokenFrames(event.answer)
            await self.send_html("chat/_answer_new.html", {"answer": event.answer, "prompt_id": event.answer.parent_id})
        elif event.kind == "token":
            frames = self.token_frames
            if frames is None or frames.answer.id != event.answer.id:
                frames = self.token_frames = TokenFrames(event.answer)
            await self.send(text_data=frames.frame(event.text))
        elif event.kind == "step":
            await self.send_html(
                "chat/_step_new.html", {"answer": event.answer, "step": event.step, "partial": event.partial}
            )

    async def _send_final(self, answer_id: uuid.UUID, *, new: bool = False) -> None:
        answer, siblings = await db_async(chat.answer_with_siblings)(
            conversation=self.conversation, answer_id=answer_id
        )
        await self._send_answer(answer, siblings, new=new)

    async def _send_answer(self, answer: Message, siblings: list[Message], *, new: bool) -> None:
        context = {"answer": answer, "siblings": siblings, "prompt_id": answer.parent_id, "new": new}
        await self.send_html("chat/_answer_final.html", context)

    async def _cancel_generation(self) -> bool:
        """Stop the answer being generated, if any; it is stored as ``stopped``."""
        task, self.generation = self.generation, None
        if task is None or task.done():
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # A task cancelled before its first step never ran: its answer, begun, is stored stopped here.
        # (asyncio runs it before this consumer's next frame, so this is a guard, not a path taken.)
        if self.unstarted is not None:
            answer, self.unstarted = self.unstarted, None
            await asyncio.shield(chat.answer_stopped(answer))
        return True

    # --- Output -----------------------------------------------------------------------------------

    async def send_html(self, template: str, context: dict[str, Any]) -> None:
        await self.send(text_data=render_to_string(template, context))

    async def send_error(self, message: str, *, restore: str | None = None) -> None:
        """Show ``message`` in the page's error box (``restore``: a refused message's text, put back in
        the composer). Never raises: it is what every failure path calls, so a failure here would
        close the socket (and stop an answer being streamed)."""
        context = {
            "message": jsonsafe.without_surrogates(str(message)),
            "restore": jsonsafe.without_surrogates(restore) if restore is not None else None,
            "max_chars": settings.CHAT_MAX_MESSAGE_CHARS,
        }
        try:
            await self.send_html("chat/_error.html", context)
        except Exception:
            logger.exception("could not send an error frame")

    @staticmethod
    def _uuid(payload: dict[str, Any], name: str) -> uuid.UUID:
        try:
            return uuid.UUID(str(payload.get(name)))
        except ValueError:
            raise FeedbackError(f"{name}: must be a valid UUID.") from None
