"""The answer in OpenAI's shapes: a completion, a streamed chunk, the usage."""

from __future__ import annotations

from typing import Any

from feedback.models import Message

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
