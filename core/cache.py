"""Rate limits kept in the cache fail open. When the cache (Redis, with ``REDIS_URL``) cannot be
reached, a counter cannot be read or moved, and the choice is between refusing everyone and letting
everyone through for the length of the outage: the platform lets them through and logs a warning,
so a Redis outage never stops the chat or the API (README, "Fault drills"). The limits are back as
soon as Redis is."""

from __future__ import annotations

import logging

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
