"""The inference API's limits: completions a minute per credential, answers at once per user."""

from __future__ import annotations

import contextlib

from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache

from core import ratelimit
from core.cache import COUNTER_ERRORS, cache_unreachable
from feedback.inference.errors import InferenceError

# --- Limits ----------------------------------------------------------------------------------------


def rate_allow(*, key: str) -> None:
    """About ``INFERENCE_RATE_PER_MINUTE`` completions over any minute per credential
    (``core.ratelimit``: counted in the cache, shared by every server process; allows while the
    cache is down)."""
    limit = settings.INFERENCE_RATE_PER_MINUTE
    verdict = ratelimit.hit(f"inference-rate:{key}", ratelimit.Rate(limit, 60))
    if not verdict.allowed:
        raise InferenceError(
            f"Rate limit reached: {limit} completions a minute (INFERENCE_RATE_PER_MINUTE);"
            f" retry in {verdict.retry_after} s.",
            code="rate_limit_exceeded",
            status=429,
            type="rate_limit_error",
            retry_after=verdict.retry_after,
        )


# A slot whose release was lost (a process killed mid-answer) frees itself after this long.
_SLOT_TTL_SECONDS = 600


def _slots_key(user: User) -> str:
    return f"inference-active:{user.pk}"


def slot_acquire(*, user: User) -> None:
    """One of the user's ``INFERENCE_MAX_CONCURRENT_PER_USER`` generations at once; 429 beyond."""
    key, limit = _slots_key(user), settings.INFERENCE_MAX_CONCURRENT_PER_USER
    try:
        cache.add(key, 0, timeout=_SLOT_TTL_SECONDS)
        active = cache.incr(key)
    except COUNTER_ERRORS as exc:  # like every limit, it fails open (core.cache)
        cache_unreachable(limit="INFERENCE_MAX_CONCURRENT_PER_USER", exc=exc)
        return
    if active > limit:
        slot_release(user=user)
        raise InferenceError(
            f"Too many answers at once: at most {limit} per user (INFERENCE_MAX_CONCURRENT_PER_USER).",
            code="too_many_concurrent_requests",
            status=429,
            type="rate_limit_error",
            retry_after=1,
        )
    # Only a slot taken renews the counter's expiry: slots lost by a killed server or a request dropped
    # before its answer started free themselves _SLOT_TTL_SECONDS after the last one taken.
    with contextlib.suppress(*COUNTER_ERRORS):
        cache.touch(key, _SLOT_TTL_SECONDS)


def slot_release(*, user: User) -> None:
    with contextlib.suppress(*COUNTER_ERRORS):  # expired meanwhile, or the cache is down
        cache.decr(_slots_key(user))
