"""Database work from async code (the chat socket, the streamed answer, the inference API) on a
bounded pool of threads.

Channels' ``database_sync_to_async`` is thread-sensitive: outside a request's
``ThreadSensitiveContext`` (a WebSocket consumer has none) every call of every consumer in the
process runs on one and the same thread, so 200 chats starting at once wait in line for it (README,
"Chat over WebSockets": time to first token grew with the chats starting together). ``db_async``
runs the calls on ``ASYNC_DB_THREADS`` threads instead (default: the database pool's size, so a
thread never waits for a connection the pool cannot give; 1 on SQLite, which takes one writer at a
time). Each call closes its connection when it ends (Channels' ``close_old_connections``; with the
psycopg pool and ``CONN_MAX_AGE`` 0 that hands it back to the pool).

What thread sensitivity protects is not needed by these calls: none relies on state an earlier call
left on its thread's connection (an open transaction, a temporary table); each is its own
transaction, as the chat's rule "no transaction is held open while the model streams" already says.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.db import DatabaseSyncToAsync
from django.conf import settings

_executors: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """The shared pool of ``ASYNC_DB_THREADS`` threads (one pool per size, made on first use)."""
    size = settings.ASYNC_DB_THREADS
    with _lock:
        pool = _executors.get(size)
        if pool is None:
            pool = _executors[size] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="async-db")
        return pool


def db_async(func: Callable[..., Any]) -> Any:
    """``func`` as a coroutine function that runs on the shared database threads."""
    return DatabaseSyncToAsync(func, thread_sensitive=False, executor=executor())
