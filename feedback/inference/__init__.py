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

import hashlib
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils.module_loading import import_string

from feedback import chat, services
from feedback.inference.errors import InferenceError, openai_error
from feedback.inference.limits import rate_allow, slot_acquire, slot_release
from feedback.inference.request import (
    CLIENT_SENT,
    ROUTED_MODEL,
    CompletionRequest,
    completion_request_parse,
)
from feedback.inference.shapes import chunk_body, completion_body, finish_reason, usage_body
from feedback.models import Conversation, Message
from models_registry.models import ModelVersion
from models_registry.selectors import live_version, running_canary

__all__ = [
    "CLIENT_SENT",
    "ROUTED_MODEL",
    "CompletionRequest",
    "InferenceError",
    "authenticate",
    "chunk_body",
    "completion_body",
    "completion_prepare",
    "completion_request_parse",
    "credential_key",
    "finish_reason",
    "models_list",
    "openai_error",
    "rate_allow",
    "slot_acquire",
    "slot_release",
    "usage_body",
]


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
