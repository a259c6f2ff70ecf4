"""What a completion request may ask: ``completion_request_parse``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from feedback import chat
from feedback.inference.errors import InferenceError
from feedback.models import Message
from models_registry.serving import Sampling

ROUTED_MODEL = "policy"
CLIENT_SENT = "(sent by the API client)"  # the model name of earlier answers a request carries
_ROLES = {"system": Message.Role.SYSTEM, "developer": Message.Role.SYSTEM, "user": Message.Role.USER,
          "assistant": Message.Role.ASSISTANT}  # fmt: skip
_UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "audio", "modalities", "prediction")


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
