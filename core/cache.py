"""Rate limits kept in the cache fail open. When the cache (Redis, with ``REDIS_URL``) cannot be
reached, a counter cannot be read or moved, and the choice is between refusing everyone and letting
everyone through for the length of the outage: the platform lets them through and logs a warning,
so a Redis outage never stops the chat or the API (README, "Fault drills"). The limits are back as
soon as Redis is."""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# What Django's Redis cache raises when Redis is down or slow (connection refused or reset, socket
# timeouts). The in-memory cache raises nothing.
CACHE_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)
# A counter (ADD then INCR) also fails when its key expires in between (ValueError): counted the same.
COUNTER_ERRORS: tuple[type[Exception], ...] = (*CACHE_ERRORS, ValueError)


def cache_unreachable(*, limit: str, exc: Exception) -> None:
    """Log that ``limit`` let a request through because the cache failed with ``exc``."""
    logger.warning("%s not applied: the cache is unreachable (%s: %s); allowing", limit, type(exc).__name__, exc)


class _SharedPoolClient(RedisCacheClient):
    """Django's Redis cache client, with its connection pools kept per process instead of per
    instance (see ``RedisCache``)."""

    _shared: ClassVar[dict[tuple[Any, str, str], Any]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def _get_connection_pool(self, write: bool) -> Any:
        client: Any = self  # RedisCacheClient's own attributes, which django-stubs do not declare
        server = client._servers[client._get_connection_pool_index(write)]
        options = client._pool_options
        # The pool's class too: two caches on one server, one with OPTIONS["pool_class"], share none.
        key = (client._pool_class, server, repr(sorted(options.items(), key=lambda item: item[0])))
        pool = self._shared.get(key)
        if pool is None:
            with self._lock:
                pool = self._shared.get(key)
                if pool is None:
                    pool = self._shared[key] = client._pool_class.from_url(server, **options)
        return pool


class RedisCache(DjangoRedisCache):
    """Django's Redis cache (``CACHES`` with ``REDIS_URL``) whose connections outlive a request.

    Django gives each thread, and each request's context under ASGI, its own cache instance
    (``django.core.cache.caches`` is an asgiref ``Local``), and each instance made its own connection
    pool: every request, every chat socket's rate-limit check, opened a new TCP connection to Redis,
    and redis-py (8.1) reads its package metadata for each new connection. Under
    ``bench/feedback_load.py --throttle 600/min`` that was 30% of the server's CPU (py-spy, README
    Benchmarks). The instances now share one pool per server and options in each process (redis-py's
    pools are thread-safe and start afresh in a forked child)."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = _SharedPoolClient
