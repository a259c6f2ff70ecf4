"""The API's per-user throttle (``API_THROTTLE_RATE``): Django REST framework's ``UserRateThrottle``
(its scope, rate, cache key, 429 and ``Retry-After``) with its count kept by ``core.ratelimit``.

DRF keeps, per user, the list of the period's request times: each request reads it from the cache,
drops the old times, adds its own and writes it back whole. At a few hundred requests a minute per
user that list is a few KB pickled both ways per request, and two requests at once read the same list
and one of them goes uncounted. Here each request is one round trip to Redis (``core.ratelimit.hit``: an
atomic counter per window, the last window weighted by its share of the rolling period). Measured
with ``bench/feedback_load.py --throttle 600/min`` (README, Benchmarks). Like every limit, it fails
open when the cache is unreachable (``core.cache``)."""

from __future__ import annotations

from typing import Any

from rest_framework import throttling
from rest_framework.request import Request

from core import ratelimit


class UserRateThrottle(throttling.UserRateThrottle):
    retry_after = 0

    def allow_request(self, request: Request, view: Any) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        rate = ratelimit.Rate(self.num_requests, self.duration)
        verdict = ratelimit.hit(self.key, rate, now=self.timer(), name="API throttle")
        self.retry_after = verdict.retry_after
        return verdict.allowed

    def wait(self) -> float | None:
        return self.retry_after
