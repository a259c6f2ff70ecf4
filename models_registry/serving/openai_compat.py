"""The openai backend: any OpenAI-compatible server (vLLM, TGI, Ollama, llama.cpp, OpenAI itself).

``POST {base_url}/v1/chat/completions`` with ``stream: true``; the answer arrives as server-sent
events, one ``data: {json}`` per chunk, ending with ``data: [DONE]``. Closing the generator closes the
HTTP stream, which tells the server to stop generating.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from django.conf import settings

from models_registry.endpoints import base_url_problem
from models_registry.models import ModelVersion
from models_registry.serving.base import Sampling, ServedPolicy, Usage, clean_messages, max_new_tokens_for, sampling
from models_registry.serving.errors import ServingError

logger = logging.getLogger(__name__)

_DONE = "[DONE]"


def chat_completions_url(base_url: str) -> str:
    """``base_url`` may be the server's root or, as OpenAI clients take it, already end in ``/v1``."""
    root = base_url.rstrip("/")
    return f"{root}/chat/completions" if root.endswith("/v1") else f"{root}/v1/chat/completions"


def _delta_text(event: dict[str, Any]) -> str:
    if "error" in event:
        raise ServingError("The model server reported an error.", code="model_server_error")
    choices = event.get("choices") or []
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    content = delta.get("content")
    return content if isinstance(content, str) else ""


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def _client() -> httpx.AsyncClient:
    """One client (and connection pool) per event loop: building a client costs ~18 ms, mostly its
    SSL context, on the loop itself (measured in bench/chat_load.py)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        client = _clients[loop] = httpx.AsyncClient(limits=limits)
    return client


class OpenAIPolicy(ServedPolicy):
    def __init__(self, *, version_id: int, label: str, base_url: str, model_name: str) -> None:
        super().__init__(version_id=version_id, label=label)
        self.base_url = base_url
        self.url = chat_completions_url(base_url)
        self.model_name = model_name

    @classmethod
    def load(cls, version: ModelVersion) -> OpenAIPolicy:
        # Nothing to load: the server may be briefly down now and up for the first question.
        if not (version.base_url and version.model_name):
            raise ServingError(f"{version.label} has no server URL or model name.", code="model_load_failed")
        if problem := base_url_problem(version.base_url):
            raise ServingError(f"{version.label} cannot be served: {problem}", code="host_not_allowed")
        return cls(version_id=version.id, label=version.label, base_url=version.base_url, model_name=version.model_name)

    async def warm(self) -> None:
        _client()  # this loop's client: its SSL context
        # httpcore's pool makes an anyio Event for each request; the first one imports anyio's asyncio
        # backend (about 0.3 s of CPU, measured with py-spy under bench/chat_load.py's 200 chats).
        anyio.Event()

    async def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int | None = None,
        options: Sampling | None = None,
        usage: Usage | None = None,
    ) -> AsyncIterator[str]:
        if options is not None and options.max_new_tokens is not None:
            max_new_tokens = options.max_new_tokens
        limit = max_new_tokens_for(max_new_tokens)
        payload = {
            "model": self.model_name,
            "messages": clean_messages(messages),
            "stream": True,
            # The server's own token counts, in a last chunk (vLLM, TGI, Ollama and OpenAI send it).
            "stream_options": {"include_usage": True},
            "max_tokens": limit,
            **sampling(options),
        }
        usage = usage if usage is not None else Usage()
        # Checked again at each answer: the allow-list may have shrunk since the version was loaded, and
        # neither the users' conversations nor the key may go anywhere else.
        if problem := base_url_problem(self.base_url):
            logger.error("%s: refusing to send a conversation: %s", self.label, problem)
            raise ServingError("The model server is not allowed any more.", code="host_not_allowed")
        headers = {"Accept": "text/event-stream"}
        api_key = settings.SERVING_OPENAI_API_KEY
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        timeout = httpx.Timeout(settings.SERVING_OPENAI_TIMEOUT_SECONDS, connect=10.0)
        try:
            async with _client().stream("POST", self.url, json=payload, headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    body = (await response.aread())[:500].decode(errors="replace")
                    logger.warning("%s: %s answered HTTP %s: %s", self.label, self.url, response.status_code, body)
                    raise ServingError(
                        f"The model server answered HTTP {response.status_code}.", code="model_server_error"
                    )
                data: list[str] = []
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                        continue
                    if line or not data:  # another field (event:, id:, a comment), or a blank between events
                        continue
                    text, data = "\n".join(data), []
                    if text.strip() == _DONE:
                        return
                    if chunk := self._parse(text, usage, limit):
                        yield chunk
                if data and "\n".join(data).strip() != _DONE and (chunk := self._parse("\n".join(data), usage, limit)):
                    yield chunk
        except httpx.TimeoutException as exc:
            logger.warning("%s: %s timed out: %r", self.label, self.url, exc)
            raise ServingError("The model server took too long to answer.", code="model_server_timeout") from exc
        except httpx.HTTPError as exc:
            logger.warning("%s: cannot reach %s: %r", self.label, self.url, exc)
            raise ServingError("The model server cannot be reached.", code="model_server_unreachable") from exc

    def _parse(self, text: str, usage: Usage, limit: int) -> str:
        try:
            event = json.loads(text)
        except json.JSONDecodeError as exc:
            logger.warning("%s: %s sent a malformed event: %.200s", self.label, self.url, text)
            raise ServingError("The model server sent a malformed answer.", code="model_server_bad_response") from exc
        if not isinstance(event, dict):
            raise ServingError("The model server sent a malformed answer.", code="model_server_bad_response")
        if "error" in event:
            logger.warning("%s: %s reported an error: %.500s", self.label, self.url, text)
        _take_usage(event, usage, limit)
        return _delta_text(event)


def _take_usage(event: dict[str, Any], usage: Usage, limit: int) -> None:
    reported = event.get("usage")
    if isinstance(reported, dict):
        for name in ("prompt_tokens", "completion_tokens"):
            if isinstance(reported.get(name), int):
                setattr(usage, name, reported[name])
    for choice in event.get("choices") or []:
        if isinstance(choice, dict) and choice.get("finish_reason") == "length":
            usage.hit_limit = True
    if usage.completion_tokens is not None and usage.completion_tokens >= limit:
        usage.hit_limit = True
