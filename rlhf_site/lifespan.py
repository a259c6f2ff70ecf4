"""The ASGI lifespan of a server process: what it does before it takes its first connection.

uvicorn runs ``lifespan.startup`` in each worker process and accepts no connection on it until the
startup completes (connections made meanwhile wait in the listening socket's queue). Up to
``WEB_WARM_UP_SECONDS``, the process compiles the chat's templates and loads and warms the live
policy (``models_registry.serving.live.preload``), the work its first chats would otherwise do while
their users wait: for a local model, seconds (torch's import and the weights); for an
OpenAI-compatible server, the HTTP client and modules loaded on first use. Nothing here can stop the
process from starting: a failure is logged, and the first chat tries again."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings

from feedback.consumers import fragments_compile
from models_registry.serving.live import preload

logger = logging.getLogger(__name__)


async def warm_up() -> None:
    started = time.perf_counter()
    try:
        templates = len(fragments_compile())
    except Exception:
        logger.exception("compiling the chat's templates failed; the first answers compile them")
        templates = 0
    policy = await preload(timeout=settings.WEB_WARM_UP_SECONDS)
    logger.info(
        "warmed up in %.2f s: %d chat templates compiled, %s",
        time.perf_counter() - started,
        templates,
        f"{policy.label} loaded" if policy else "no policy loaded",
    )


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if settings.WEB_WARM_UP_SECONDS > 0:
                await warm_up()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
