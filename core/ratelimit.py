"""Rate limits kept in the cache (Redis when REDIS_URL is set), shared by every process.

A limit is a ``Rate`` such as ``600/min``: about 600 hits per key over any rolling minute, as
Django REST framework's throttles promise. ``hit`` estimates the period's hits from two fixed
windows (the "sliding window counter"): this window's counter plus the last window's, weighted by
the share of it still inside the period, so there is no burst of twice the rate across a window's
edge (it is an estimate: exact for evenly spread hits, and under twice the rate over any period at
worst) (the chat's, the inference API's and sign-in's limits were plain fixed windows before
2026-12-02; the API throttle was first). A hit is one round trip to Redis (a Lua script), and a
refused hit is not counted. Limits **degrade open**: when the cache cannot be reached the hit is
allowed (and logged), because refusing every chat message and sign-in while Redis is down would
turn a cache outage into a full one. README "Abuse limits" says so to operators.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass

from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import NoScriptError

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
    # The estimate of the hits over the rolling period, this one included, rounded up; 0 when the
    # cache was unreachable.
    count: int
    retry_after: int  # seconds until a hit is allowed again; 0 when allowed


def hit(key: str, rate: Rate | str | None, *, now: float | None = None, name: str | None = None) -> Verdict:
    """Count one hit on ``key`` against ``rate`` (None: no limit) over a rolling period, estimated
    from two fixed windows: this window's hits plus the last window's, weighted by the share of it
    still inside the period (exact when the last window's hits were spread evenly). One round trip
    to Redis (``_ROLLING``, a script), which also takes a refused hit back, so only allowed hits
    count, as with DRF. ``count`` is the estimate, rounded up; ``retry_after`` the seconds until the
    estimate lets one more through. ``name`` names the limit in the log."""
    if rate is None:
        return Verdict(True, 0, 0)
    rate = Rate.parse(rate) if isinstance(rate, str) else rate
    if rate.count < 1:  # nothing allowed (DRF's "0/min")
        return Verdict(False, 0, rate.seconds)
    window, elapsed, weight = _windows(rate, time.time() if now is None else now)
    try:
        count, before, allowed = _count_rolling(
            f"ratelimit:{key}:{window}", f"ratelimit:{key}:{window - 1}", 2 * rate.seconds + 1, weight, rate.count
        )
    except COUNTER_ERRORS as exc:  # degrade open
        cache_unreachable(limit=name or f"Rate limit {key}", exc=exc)
        return Verdict(True, 0, 0)
    estimate = _rounded(before * weight + count)
    if allowed:
        return Verdict(True, estimate, 0)
    return Verdict(False, estimate, _rolling_wait(before, count - 1, rate, elapsed))


# An estimate this close over the limit is within it: float error (15 x (1 - 40/60) is
# 5.000000000000001) would otherwise refuse a client at the second its Retry-After named.
_TOLERANCE = 1e-9


def _within(estimate: float, limit: int) -> bool:
    return estimate <= limit + _TOLERANCE


def _rounded(estimate: float) -> int:
    return math.ceil(estimate - _TOLERANCE)


# KEYS: this window's counter, the last window's. ARGV: the counter's time to live, the last
# window's weight, the limit plus _TOLERANCE. Counts the hit, and takes it back if the estimate is
# over the limit, atomically: no other request sees a refused hit counted (two round trips, DECR
# apart, before 2026-12-02). Lua's numbers are doubles, as Python's floats, and ARGV[2] is ``repr``
# of one: the same estimate both sides. Replies {the count with this hit, the last window's count,
# 1 if allowed else 0}.
_ROLLING = """
redis.call('SET', KEYS[1], 0, 'NX', 'EX', ARGV[1])
local count = redis.call('INCR', KEYS[1])
local before = tonumber(redis.call('GET', KEYS[2]) or '0')
if before * tonumber(ARGV[2]) + count > tonumber(ARGV[3]) then
  redis.call('DECR', KEYS[1])
  return {count, before, 0}
end
return {count, before, 1}
"""
_ROLLING_SHA = hashlib.sha1(_ROLLING.encode()).hexdigest()


def _count_rolling(current: str, previous: str, ttl: int, weight: float, limit: int) -> tuple[int, int, bool]:
    """Count a hit on the counter ``current`` (created expiring in ``ttl`` seconds) unless the last
    window's ``previous`` times ``weight`` plus it would be over ``limit``; returns the count with the
    hit, the last window's, and whether it was allowed (and kept)."""
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        key = backend.make_and_validate_key(current)
        client = backend._cache.get_client(key, write=True)  # type: ignore[attr-defined]
        arguments = (key, backend.make_and_validate_key(previous), ttl, repr(weight), repr(limit + _TOLERANCE))
        try:
            replies = client.evalsha(_ROLLING_SHA, 2, *arguments)
        except NoScriptError:  # the first hit on this Redis server (or since it restarted): EVAL caches it
            replies = client.eval(_ROLLING, 2, *arguments)
        return int(replies[0]), int(replies[1]), bool(replies[2])
    cache.add(current, 0, timeout=ttl)  # other caches (the in-memory one without REDIS_URL)
    count, before = int(cache.incr(current)), int(cache.get(previous, 0))
    allowed = _within(before * weight + count, limit)
    if not allowed:
        with contextlib.suppress(ValueError):  # expired meanwhile: nothing to take back
            cache.decr(current)
    return count, before, allowed


def _windows(rate: Rate, now: float) -> tuple[int, float, float]:
    """This window's number, the seconds elapsed in it, and the last window's weight (its share
    still inside the rolling period)."""
    window = int(now // rate.seconds)
    elapsed = now - window * rate.seconds
    return window, elapsed, 1 - elapsed / rate.seconds


def _rolling_wait(before: int, count: int, rate: Rate, elapsed: float) -> int:
    """Seconds until ``hit`` allows one more, ``count`` hits counted in this window so far
    (``elapsed`` seconds into it) and ``before`` in the last."""
    room = rate.count - 1 - count  # what the last window may still weigh
    if room >= 0:  # this window has room: wait for the last one's weight to fall
        wait = rate.seconds * (before - room) / before - elapsed if before else 0.0
    else:  # this window alone is full: wait for its own weight to fall, in the next window
        wait = (rate.seconds - elapsed) + rate.seconds * (count - rate.count + 1) / count
    return max(1, math.ceil(wait))


def peek(key: str, rate: Rate | str | None, *, now: float | None = None, name: str | None = None) -> Verdict:
    """Whether ``hit`` would allow one more hit on ``key`` now, without counting one (one round trip:
    the two windows' counters read together)."""
    if rate is None:
        return Verdict(True, 0, 0)
    rate = Rate.parse(rate) if isinstance(rate, str) else rate
    if rate.count < 1:
        return Verdict(False, 0, rate.seconds)
    window, elapsed, weight = _windows(rate, time.time() if now is None else now)
    current, previous = f"ratelimit:{key}:{window}", f"ratelimit:{key}:{window - 1}"
    try:
        counters = cache.get_many([current, previous])
    except CACHE_ERRORS as exc:
        cache_unreachable(limit=name or f"Rate limit {key}", exc=exc)
        return Verdict(True, 0, 0)
    count, before = int(counters.get(current, 0)), int(counters.get(previous, 0))
    estimate = before * weight + count
    if _within(estimate + 1, rate.count):
        return Verdict(True, _rounded(estimate), 0)
    return Verdict(False, _rounded(estimate), _rolling_wait(before, count, rate, elapsed))
