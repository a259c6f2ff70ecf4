"""Fixed-window rate limits kept in the cache (Redis when REDIS_URL is set), shared by every process.

A limit is a ``Rate`` such as ``600/min``: at most 600 hits per key in each calendar minute. The
counter is one cache key per window, created expiring with the window and incremented in one
MULTI/EXEC on Redis, so a check is one round trip (three before 2026-12-01: Django's ``add``, then
its ``incr``, which asks whether the key exists first). Limits **degrade open**: when the cache
cannot be reached the hit is allowed (and logged), because refusing every chat message and sign-in
while Redis is down would turn a cache outage into a full one. README "Abuse limits" says so to
operators.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache

from core.cache import CACHE_ERRORS, COUNTER_ERRORS, cache_unreachable

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"600/min"``, ``"10/h"``, ``"5/s"``, ``"1000/day"`` (the period's first letter counts)."""
        count, _, period = text.strip().partition("/")
        if not (count.isascii() and count.isdigit()) or int(count) < 1 or not period or period[0] not in _PERIODS:
            raise ValueError(f"{text!r} is not a rate: use e.g. 600/min, 10/h, 5/s or 1000/day.")
        return cls(int(count), _PERIODS[period[0]])


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    count: int  # hits in this window so far, this one included (0 when the cache was unreachable)
    retry_after: int  # seconds until the window ends


def _window(rate: Rate, now: float) -> tuple[int, int]:
    window = int(now // rate.seconds)
    return window, int((window + 1) * rate.seconds - now) + 1


def hit(key: str, rate: Rate | str | None, *, now: float | None = None) -> Verdict:
    """Count one hit on ``key`` and say whether it is within ``rate`` (None: no limit)."""
    if rate is None:
        return Verdict(True, 0, 0)
    rate = Rate.parse(rate) if isinstance(rate, str) else rate
    window, retry_after = _window(rate, time.time() if now is None else now)
    try:
        count = _count(f"ratelimit:{key}:{window}", ttl=rate.seconds + 1)
    except COUNTER_ERRORS as exc:  # degrade open
        cache_unreachable(limit=f"Rate limit {key}", exc=exc)
        return Verdict(True, 0, 0)
    return Verdict(count <= rate.count, count, retry_after)


def _count(cache_key: str, *, ttl: int) -> int:
    """Add one to the counter ``cache_key``, created at 0 expiring in ``ttl`` seconds if it is new."""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        key = backend.make_and_validate_key(cache_key)
        # Django's Redis client (not in its stubs), giving redis-py's client for this key.
        client = backend._cache.get_client(key, write=True)  # type: ignore[attr-defined]
        with client.pipeline(transaction=True) as pipe:  # both or neither, in one round trip
            pipe.set(key, 0, nx=True, ex=ttl)
            pipe.incr(key)
            _created, count = pipe.execute()
        return int(count)
    cache.add(cache_key, 0, timeout=ttl)  # other caches (the in-memory one without REDIS_URL)
    return int(cache.incr(cache_key))


def peek(key: str, rate: Rate | str | None, *, now: float | None = None) -> Verdict:
    """Whether ``key`` has already used up ``rate`` in this window, without counting a hit."""
    if rate is None:
        return Verdict(True, 0, 0)
    rate = Rate.parse(rate) if isinstance(rate, str) else rate
    window, retry_after = _window(rate, time.time() if now is None else now)
    try:
        count = int(cache.get(f"ratelimit:{key}:{window}", 0))
    except CACHE_ERRORS as exc:
        cache_unreachable(limit=f"Rate limit {key}", exc=exc)
        return Verdict(True, 0, 0)
    return Verdict(count < rate.count, count, retry_after)
