"""The inference API's views: ``POST /v1/chat/completions`` and ``GET /v1/models``, as OpenAI clients
call them. Plain async Django views (not DRF: a streamed answer is a ``StreamingHttpResponse`` over
an async iterator, served by the ASGI server without a thread per request); errors in OpenAI's shape.

The answer is generated and stored by ``feedback.chat.answer_stream``, as for the web chat. A client
that disconnects mid-stream cancels the response: the answer is stored as ``stopped``. No prompt or
answer text is logged; INFO lines carry ids, counts and timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from core.asyncdb import db_async
from feedback import chat, inference
from feedback.inference import InferenceError
from feedback.models import Message

logger = logging.getLogger(__name__)


def _error(exc: InferenceError) -> JsonResponse:
    response = JsonResponse(inference.openai_error(exc), status=exc.http_status)
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    return response


def _method_not_allowed(allowed: str) -> JsonResponse:
    response = _error(InferenceError(f"Use {allowed}.", code="method_not_allowed", status=405))
    response["Allow"] = allowed
    return response


async def _caller(request: HttpRequest) -> tuple[Any, Any]:
    return await db_async(inference.authenticate)(request)


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    if request.method != "POST":
        return _method_not_allowed("POST")
    try:
        return await _chat_completions(request)
    except InferenceError as exc:
        return _error(exc)


async def _chat_completions(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    user, auth = await _caller(request)
    length, limit = int(request.headers.get("Content-Length") or 0), settings.INFERENCE_MAX_BODY_BYTES
    if length > limit or len(request.body) > limit:
        raise InferenceError(
            f"The request body is {max(length, len(request.body))} bytes; the limit is {limit} bytes "
            "(INFERENCE_MAX_BODY_BYTES).",
            code="request_too_large",
            status=413,
        )
    try:
        body = json.loads(request.body)
    except ValueError:
        raise InferenceError("The body is not valid JSON.", code="invalid_json") from None
    parsed = inference.completion_request_parse(body)
    live = chat.live_version_id() if parsed.model == inference.ROUTED_MODEL else None
    prepare = asyncio.ensure_future(
        db_async(inference.completion_prepare)(
            user=user, key=inference.credential_key(user, auth), request=parsed, live_version_id=live
        )
    )
    try:  # the client gone during the trip: its thread goes on, and the answer it begins is stored stopped
        version_id, begun = await chat.begun_or_stopped(prepare, lambda prepared: prepared[1][2])
    except BaseException:
        if prepare.done() and not prepare.cancelled() and prepare.exception() is None:
            await asyncio.shield(db_async(inference.slot_release)(user=user))  # the slot it took
        raise
    generation = chat.Generation(
        sampling=parsed.generation.sampling, stop=parsed.generation.stop, version_id=version_id
    )
    released = False

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            await db_async(inference.slot_release)(user=user)

    try:
        prompt: Message | None = begun[2].parent  # the user turn the answer begun answers
        assert prompt is not None
        events = chat.answer_stream(prompt=prompt, generation=generation, begun=begun)
        first = await anext(events)
        if first.kind == "end":  # no answer could be started (the model cannot load): nothing streamed yet
            await events.aclose()
            raise InferenceError(
                first.answer.error or "The model cannot answer now.",
                code="model_unavailable",
                status=503,
                type="server_error",
            )
    except BaseException:
        await release()
        raise
    started = time.monotonic()
    if parsed.stream:
        return StreamingHttpResponse(
            _sse(first.answer, events, parsed, release, started, user.pk),
            content_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                if event.kind == "end":
                    answer = event.answer
    finally:
        await release()
    _log(answer, user.pk, started)
    if answer.status == Message.Status.FAILED:
        return _error(InferenceError(answer.error, code="generation_failed", status=503, type="server_error"))
    return JsonResponse(inference.completion_body(answer, model=answer.served_by))  # type: ignore[attr-defined]


def _sse_event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _sse(
    answer: Message,
    events: AsyncGenerator[chat.ChatEvent, None],
    parsed: inference.CompletionRequest,
    release: Any,
    started: float,
    user_id: int,
) -> AsyncIterator[bytes]:
    """The answer as server-sent events: a role chunk, a chunk per piece of text, a last chunk with
    the finish reason (and a usage chunk when asked), then ``[DONE]``."""
    model = answer.served_by  # type: ignore[attr-defined]
    try:
        yield _sse_event(inference.chunk_body(answer, model=model, delta={"role": "assistant", "content": ""}))
        async with contextlib.aclosing(chat.tokens_batched(events)) as batched:
            async for event in batched:
                if event.kind == "token":
                    yield _sse_event(inference.chunk_body(answer, model=model, delta={"content": event.text}))
                elif event.kind == "end":
                    answer = event.answer
        _log(answer, user_id, started)
        if answer.status == Message.Status.FAILED:
            error = InferenceError(answer.error, code="generation_failed", status=503, type="server_error")
            yield _sse_event(inference.openai_error(error))
        else:
            finish = inference.finish_reason(answer)
            yield _sse_event(inference.chunk_body(answer, model=model, delta={}, finish=finish))
            if parsed.include_usage:
                usage_chunk = {**inference.chunk_body(answer, model=model, delta={}), "choices": []}
                yield _sse_event({**usage_chunk, "usage": inference.usage_body(answer)})
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()  # closed before it was read (the client went away): the answer is stored stopped
        await release()


def _log(answer: Message, user_id: int, started: float) -> None:
    usage = inference.usage_body(answer)
    logger.info(
        "completion %s for user %s by %s: %s, %d prompt + %d completion tokens, %d ms",
        answer.id,
        user_id,
        getattr(answer, "served_by", "-"),
        answer.status,
        usage["prompt_tokens"],
        usage["completion_tokens"],
        (time.monotonic() - started) * 1000,
    )


async def models(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return _method_not_allowed("GET")
    try:
        user, _ = await _caller(request)
    except InferenceError as exc:
        return _error(exc)
    rows = await db_async(inference.models_list)(user=user)
    return JsonResponse({"object": "list", "data": rows})


async def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    return _error(
        InferenceError(
            "Unknown endpoint: this server offers POST /v1/chat/completions and GET /v1/models.",
            code="unknown_url",
            status=404,
        )
    )
