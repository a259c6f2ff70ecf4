"""What a served policy is, whatever serves it, and the settings the backends share."""

from __future__ import annotations

import abc
import asyncio
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

from django.conf import settings

from models_registry.serving.errors import ServingError

ROLES = frozenset({"system", "user", "assistant"})


def max_new_tokens_for(requested: int | None) -> int:
    limit = settings.SERVING_MAX_NEW_TOKENS
    if requested is None:
        return limit
    if requested < 1:
        raise ServingError("max_new_tokens must be at least 1.", code="invalid_request")
    return min(requested, limit)


@dataclass(frozen=True)
class Sampling:
    """What one request asks of the sampler; ``None`` takes the setting (``SERVING_TEMPERATURE``,
    ``SERVING_TOP_P``). ``max_new_tokens`` is bounded by ``SERVING_MAX_NEW_TOKENS`` either way."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None


@dataclass
class Usage:
    """Filled in by a backend while it streams: the prompt's tokens as the model saw them, the tokens
    it generated, and whether it stopped because it reached ``max_new_tokens``. ``None``: the backend
    could not tell (an OpenAI-compatible server that reports no usage)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    hit_limit: bool = False


def sampling(requested: Sampling | None = None) -> dict[str, float]:
    requested = requested or Sampling()
    return {
        "temperature": settings.SERVING_TEMPERATURE if requested.temperature is None else requested.temperature,
        "top_p": settings.SERVING_TOP_P if requested.top_p is None else requested.top_p,
    }


def clean_messages(messages: object) -> list[dict[str, str]]:
    """The chat in OpenAI/TRL format, checked: a non-empty list of {role, content} with known roles."""
    if not isinstance(messages, list) or not messages:
        raise ServingError("The conversation is empty.", code="invalid_messages")
    cleaned = []
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise ServingError(
                "Each message needs a role (system, user or assistant) and text content.", code="invalid_messages"
            )
        cleaned.append({"role": message["role"], "content": message["content"]})
    return cleaned


class ServedPolicy(abc.ABC):
    """One loaded policy version. Shared by every request of the process; ``stream`` is reentrant."""

    def __init__(self, *, version_id: int, label: str) -> None:
        self.version_id = version_id
        self.label = label

    @abc.abstractmethod
    def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int | None = None,
        options: Sampling | None = None,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        """Text chunks of the assistant's answer to ``messages``, as they are generated. Stops
        generating when the consumer stops iterating (``aclose()`` or cancellation). ``options``
        overrides the sampling settings for this answer; ``usage``, when given, is filled in."""

    async def warm(self) -> None:
        """Do the work the first answer would otherwise pay for (a client to build, modules that load
        on first use), on the event loop that will serve. A server process calls it as it starts
        (``models_registry.serving.live.preload``); nothing by default."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


# One semaphore per event loop: asyncio primitives belong to the loop they are first used on.
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def generation_slots() -> asyncio.Semaphore:
    """Bounds the generations running at once in this process (``SERVING_MAX_CONCURRENT``); the
    others wait their turn, first come first served."""
    loop = asyncio.get_running_loop()
    if loop not in _slots:
        _slots[loop] = asyncio.Semaphore(settings.SERVING_MAX_CONCURRENT)
    return _slots[loop]


def reset_slots() -> None:
    _slots.clear()
