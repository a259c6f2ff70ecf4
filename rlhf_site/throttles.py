"""The API's per-user throttle (``API_THROTTLE_RATE``), failing open when the cache is unreachable
(``core.cache``)."""

from __future__ import annotations

from typing import Any

from rest_framework import throttling
from rest_framework.request import Request

from core.cache import CACHE_ERRORS, cache_unreachable


class UserRateThrottle(throttling.UserRateThrottle):
    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except CACHE_ERRORS as exc:
            cache_unreachable(limit="API throttle", exc=exc)
            return True
