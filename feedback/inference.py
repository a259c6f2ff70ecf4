"""The inference API's rules (``/v1/``, OpenAI-compatible): what a request may ask, which version
answers it, where its turn is stored, and the limits. The views (``feedback.inference_api``) call
these and the chat service (``feedback.chat``), which generates and stores the answer exactly as for
the web chat.

A completion stores its last message as a user turn, in the conversation named by
``metadata.conversation_id`` (the caller's own) or in a new one. In a new conversation the messages
before it (a system prompt, earlier turns) are stored first, so the model is sent the conversation by
the one rule the feedback processor trains on (``core.prompts``); in a named conversation its stored
turns are the history and the earlier messages of the request are not read.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import transaction
from django.utils.module_loading import import_string

from core import ratelimit
from core.cache import COUNTER_ERRORS, cache_unreachable
from feedback import chat, services
from feedback.exceptions import FeedbackError
from feedback.models import Conversation, Message
from models_registry.models import ModelVersion
from models_registry.selectors import live_version, running_canary
from models_registry.serving import Sampling

ROUTED_MODEL = "policy"
CLIENT_SENT = "(sent by the API client)"  # the model name of earlier answers a request carries
_ROLES = {"system": Message.Role.SYSTEM, "developer": Message.Role.SYSTEM, "user": Message.Role.USER,
          "assistant": Message.Role.ASSISTANT}  # fmt: skip
_UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "audio", "modalities", "prediction")


class InferenceError(FeedbackError):
    """An error of the inference API, shown to clients in OpenAI's shape: ``type`` and ``param``
    besides the message and code; ``retry_after`` (seconds) on a 429."""

    type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int = 400,
        param: str | None = None,
        type: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.http_status = status
        self.param = param
        self.retry_after = retry_after
        if type:
            self.type = type


def openai_error(exc: InferenceError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


# --- Authentication --------------------------------------------------------------------------------


def authenticate(request: Any) -> tuple[User, Any]:
    """The caller of a ``/v1/`` request, by ``INFERENCE_AUTHENTICATION_CLASSES`` (DRF authenticators);
    raises a 401 ``InferenceError``. Blocking (may read the database)."""
    from rest_framework.exceptions import APIException
    from rest_framework.request import Request

    authenticators = [import_string(name)() for name in settings.INFERENCE_AUTHENTICATION_CLASSES]
    drf_request = Request(request, authenticators=authenticators)
    try:
        user = drf_request.user
    except APIException as exc:
        raise InferenceError(str(exc.detail), code="invalid_api_key", status=401, type="authentication_error") from None
    if not user or not user.is_authenticated:
        raise InferenceError(
            "Send your API token or Supabase JWT as 'Authorization: Bearer <token>'.",
            code="missing_api_key",
            status=401,
            type="authentication_error",
        )
    return user, drf_request.auth


def credential_key(user: User, auth: Any) -> str:
    """What the rate limit counts by: the API token itself (hashed), or the user for a JWT (a new
    one is issued every hour)."""
    key = getattr(auth, "key", None)
    if isinstance(key, str):
        return "token:" + hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"user:{user.pk}"


# --- The request -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    messages: list[dict[str, str]]
    stream: bool
    include_usage: bool
    generation: chat.Generation
    conversation_id: uuid.UUID | None


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InferenceError(f"{name} must be a number from {low:g} to {high:g}.", param=name, code="invalid_value")
    return float(value)


def _text(content: object, index: int) -> str:
    """A message's content: a string, or OpenAI's list of parts where only text parts are taken."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InferenceError(
                    "Only text content is supported.", param=f"messages[{index}].content", code="invalid_content"
                )
            parts.append(part["text"])
        return "".join(parts)
    raise InferenceError("content must be a string.", param=f"messages[{index}].content", code="invalid_content")


def _messages(raw: object) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise InferenceError("messages must be a non-empty list.", param="messages", code="invalid_messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise InferenceError(
                "Each message needs a role: system, developer, user or assistant.",
                param=f"messages[{index}].role",
                code="invalid_messages",
            )
        messages.append({"role": _ROLES[message["role"]], "content": _text(message.get("content"), index)})
    if messages[-1]["role"] != Message.Role.USER or not messages[-1]["content"].strip():
        raise InferenceError(
            "The last message must be the user's, with text.", param="messages", code="invalid_messages"
        )
    total, limit = sum(len(m["content"]) for m in messages), settings.INFERENCE_MAX_PROMPT_CHARS
    if total > limit:
        raise InferenceError(
            f"The messages have {total} characters; the limit is {limit} (INFERENCE_MAX_PROMPT_CHARS).",
            param="messages",
            code="context_length_exceeded",
        )
    last, limit = len(messages[-1]["content"].strip()), settings.CHAT_MAX_MESSAGE_CHARS
    if last > limit:
        raise InferenceError(
            f"The last message has {last} characters; the limit is {limit} (CHAT_MAX_MESSAGE_CHARS).",
            param="messages",
            code="context_length_exceeded",
        )
    return messages


def _stop(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    stop = [raw] if isinstance(raw, str) else raw
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise InferenceError("stop must be a string or a list of up to 4 non-empty strings.", param="stop")
    return tuple(stop)


def _max_tokens(body: dict[str, Any]) -> int | None:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return None
    limit = settings.INFERENCE_MAX_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise InferenceError(
            f"{name} must be an integer from 1 to {limit} (INFERENCE_MAX_TOKENS).", param=name, code="invalid_value"
        )
    return value


def _conversation_id(metadata: object) -> uuid.UUID | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InferenceError("metadata must be an object.", param="metadata")
    raw = metadata.get("conversation_id")
    if raw is None:
        return None
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise InferenceError(
            "metadata.conversation_id must be a conversation id (a UUID).", param="metadata.conversation_id"
        ) from None


def completion_request_parse(body: object) -> CompletionRequest:
    """The request checked field by field (no database). Unknown fields are ignored, as OpenAI-compatible
    servers do; those that ask for what this server cannot do are refused."""
    if not isinstance(body, dict):
        raise InferenceError("The body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InferenceError("model is required: 'policy' for the live policy, or 'policy:N'.", param="model")
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, [], {}):
            raise InferenceError(f"{name} is not supported by this server.", param=name, code="unsupported_parameter")
    n = body.get("n")
    if n is not None and n != 1:
        raise InferenceError("Only n = 1 is supported: one answer per request.", param="n", code="unsupported_value")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InferenceError("stream must be true or false.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise InferenceError("stream_options must be an object.", param="stream_options")
    sampling = Sampling(
        max_new_tokens=_max_tokens(body),
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
    )
    return CompletionRequest(
        model=model,
        messages=_messages(body.get("messages")),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        generation=chat.Generation(sampling=sampling, stop=_stop(body.get("stop"))),
        conversation_id=_conversation_id(body.get("metadata")),
    )


# --- Models ----------------------------------------------------------------------------------------


def may_see_other_versions(user: User) -> bool:
    """Who may ask for (and see in /v1/models) a version besides the live one: the canary, an
    approved version. Everyone else gets the live policy only."""
    return user.has_perm("models_registry.view_modelversion")


def _no_model(model: str) -> InferenceError:
    return InferenceError(
        f"The model '{model[:60]}' does not exist or you do not have access to it; "
        "use 'policy' (the live policy) or see GET /v1/models.",
        code="model_not_found",
        status=404,
        param="model",
    )


def model_resolve(*, user: User, model: str) -> int | None:
    """The version a request for ``model`` is answered by: ``None`` for 'policy' (the live policy, or
    the conversation's canary arm), else the version's id. Raises 404 for a model the caller may not
    use and 503 when no policy is live."""
    live = live_version(ModelVersion.Kind.POLICY)
    if live is None:
        raise InferenceError(
            "No policy model is live yet; an operator must deploy one.",
            code="no_live_policy",
            status=503,
            type="server_error",
        )
    if model == ROUTED_MODEL:
        return None
    kind, _, number = model.partition(":")
    if kind != ModelVersion.Kind.POLICY or not (number.isascii() and number.isdigit()):
        raise _no_model(model)
    version = ModelVersion.objects.filter(kind=kind, number=int(number)).first()
    if version is None:
        raise _no_model(model)
    if version.pk == live.pk:
        return version.pk
    canary = running_canary(ModelVersion.Kind.POLICY)
    usable = {ModelVersion.Status.APPROVED, ModelVersion.Status.CANARY}
    if may_see_other_versions(user) and (version.status in usable or (canary and canary.version_id == version.pk)):
        return version.pk
    raise _no_model(model)


def models_list(*, user: User) -> list[dict[str, Any]]:
    """``GET /v1/models``: 'policy' and the live version, and for those who may see it the canary."""
    live = live_version(ModelVersion.Kind.POLICY)
    if live is None:
        return []
    created = int((live.deployed_at or live.created_at).timestamp())
    rows = [
        {"id": ROUTED_MODEL, "object": "model", "created": created, "owned_by": "rlhf-platform", "version": live.label},
        {"id": live.label, "object": "model", "created": created, "owned_by": "rlhf-platform", "status": "live"},
    ]
    canary = running_canary(ModelVersion.Kind.POLICY)
    if canary is not None and may_see_other_versions(user):
        rows.append(
            {
                "id": canary.version.label,
                "object": "model",
                "created": int(canary.started_at.timestamp()),
                "owned_by": "rlhf-platform",
                "status": "canary",
                "share": canary.share,
            }
        )
    return rows


# --- Storing the turn ------------------------------------------------------------------------------


@transaction.atomic(savepoint=False)  # inside completion_prepare's transaction: no SAVEPOINT trips
def completion_prompt_store(*, user: User, request: CompletionRequest) -> Message:
    """The request's last message stored as a user turn (see the module's docstring); returns it."""
    if request.conversation_id is not None:
        conversation = Conversation.objects.filter(id=request.conversation_id, user=user).first()
        if conversation is None:
            raise InferenceError(
                "Conversation not found.", code="not_found", status=404, param="metadata.conversation_id"
            )
    else:
        conversation = Conversation.objects.create(user=user)
        _store_earlier(conversation, request.messages[:-1])
    return chat.user_turn_create(conversation=conversation, content=request.messages[-1]["content"])


def _store_earlier(conversation: Conversation, messages: list[dict[str, str]]) -> None:
    turn: Message | None = None
    for index, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == Message.Role.ASSISTANT:  # the client's, not a registry version's
            if turn is None:
                raise InferenceError(
                    "An assistant message must follow a user message.",
                    param=f"messages[{index}]",
                    code="invalid_messages",
                )
            services.external_answer_create(prompt=turn, content=content, model=CLIENT_SENT)
            continue
        stored = Message.objects.create(conversation=conversation, role=role, content=content)
        if role == Message.Role.USER:
            turn = stored


# --- Limits ----------------------------------------------------------------------------------------


def rate_allow(*, key: str) -> None:
    """At most ``INFERENCE_RATE_PER_MINUTE`` completions over any minute per credential
    (``core.ratelimit``: counted in the cache, shared by every server process; allows while the
    cache is down)."""
    limit = settings.INFERENCE_RATE_PER_MINUTE
    verdict = ratelimit.hit(f"inference-rate:{key}", ratelimit.Rate(limit, 60))
    if not verdict.allowed:
        raise InferenceError(
            f"Rate limit reached: {limit} completions a minute (INFERENCE_RATE_PER_MINUTE);"
            f" retry in {verdict.retry_after} s.",
            code="rate_limit_exceeded",
            status=429,
            type="rate_limit_error",
            retry_after=verdict.retry_after,
        )


# A slot whose release was lost (a process killed mid-answer) frees itself after this long.
_SLOT_TTL_SECONDS = 600


def _slots_key(user: User) -> str:
    return f"inference-active:{user.pk}"


def slot_acquire(*, user: User) -> None:
    """One of the user's ``INFERENCE_MAX_CONCURRENT_PER_USER`` generations at once; 429 beyond."""
    key, limit = _slots_key(user), settings.INFERENCE_MAX_CONCURRENT_PER_USER
    try:
        cache.add(key, 0, timeout=_SLOT_TTL_SECONDS)
        active = cache.incr(key)
    except COUNTER_ERRORS as exc:  # like every limit, it fails open (core.cache)
        cache_unreachable(limit="INFERENCE_MAX_CONCURRENT_PER_USER", exc=exc)
        return
    if active > limit:
        slot_release(user=user)
        raise InferenceError(
            f"Too many answers at once: at most {limit} per user (INFERENCE_MAX_CONCURRENT_PER_USER).",
            code="too_many_concurrent_requests",
            status=429,
            type="rate_limit_error",
            retry_after=1,
        )
    # Only a slot taken renews the counter's expiry: slots lost by a killed server or a request dropped
    # before its answer started free themselves _SLOT_TTL_SECONDS after the last one taken.
    with contextlib.suppress(*COUNTER_ERRORS):
        cache.touch(key, _SLOT_TTL_SECONDS)


def slot_release(*, user: User) -> None:
    with contextlib.suppress(*COUNTER_ERRORS):  # expired meanwhile, or the cache is down
        cache.decr(_slots_key(user))


def completion_prepare(
    *, user: User, key: str, request: CompletionRequest, live_version_id: int | None
) -> tuple[int | None, chat.Begun]:
    """Everything between the request and the model, in one trip to a database thread: the rate
    limit, the model, a generation slot (released again if nothing can be stored), then in one
    transaction the user turn and its answer begun (``chat.generation_begin``; ``live_version_id``:
    the live version as this process serves it, for a request routed to 'policy'). Returns the
    version asked for by name (or None) and the answer begun."""
    rate_allow(key=key)
    version_id = model_resolve(user=user, model=request.model)
    slot_acquire(user=user)
    try:
        with transaction.atomic():
            prompt = completion_prompt_store(user=user, request=request)
            begun = chat.generation_begin(
                prompt=prompt,
                regenerate_of=None,
                version_id=version_id,
                live_version_id=live_version_id if version_id is None else None,
            )
        return version_id, begun
    except BaseException:
        slot_release(user=user)
        raise


# --- The answer in OpenAI's shapes -----------------------------------------------------------------


def finish_reason(answer: Message) -> str:
    usage = getattr(answer, "usage", None)
    return "length" if usage is not None and usage.hit_limit else "stop"


def usage_body(answer: Message) -> dict[str, int]:
    usage = getattr(answer, "usage", None)
    prompt = (usage.prompt_tokens if usage else None) or 0
    completion = answer.token_count or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(answer: Message, *, model: str) -> dict[str, Any]:
    return {
        "id": str(answer.id),
        "object": "chat.completion",
        "created": int(answer.created_at.timestamp()),
        "model": model,
        "conversation_id": str(answer.conversation_id),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.content},
                "finish_reason": finish_reason(answer),
                "logprobs": None,
            }
        ],
        "usage": usage_body(answer),
    }


def chunk_body(answer: Message, *, model: str, delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": str(answer.id),
        "object": "chat.completion.chunk",
        "created": int(answer.created_at.timestamp()),
        "model": model,
        "conversation_id": str(answer.conversation_id),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
