"""Rate limits fail open when the cache (Redis) is unreachable: the chat's and the API's requests go
through, with a warning in the log (core.cache). The drill with a real outage is in
tests/e2e/test_fault_drills.py."""

from __future__ import annotations

import logging

import pytest

from feedback import chat
from feedback.models import Feedback
from tests.helpers import free_port
from tests.test_feedback_api import URL, post


@pytest.fixture
def unreachable_cache(settings):
    """The cache is a Redis that nobody listens on (connection refused)."""
    settings.CACHES = {
        "default": {
            "BACKEND": "core.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }


def test_the_chat_rate_limit_allows_when_the_cache_is_unreachable(alice, unreachable_cache, settings, caplog):
    settings.CHAT_RATE_PER_MINUTE = 1
    with caplog.at_level(logging.WARNING, logger="core.cache"):
        for _ in range(3):  # over the limit of 1, and still allowed
            chat.generation_allow(user=alice)
    assert "Rate limit chat-rate:" in caplog.text
    assert "not applied: the cache is unreachable (ConnectionError" in caplog.text


def test_the_api_throttle_allows_when_the_cache_is_unreachable(api, answer, unreachable_cache, monkeypatch, caplog):
    from rest_framework.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "1/min"})
    with caplog.at_level(logging.WARNING, logger="core.cache"):
        statuses = [post(api, {"message_id": str(answer.id), "rating": n}).status_code for n in (1, 2, 3)]
    assert statuses == [201, 200, 200]
    assert Feedback.objects.get(message=answer).rating == 3
    assert "API throttle not applied: the cache is unreachable" in caplog.text


def test_the_api_throttle_still_limits_when_the_cache_works(api, monkeypatch):
    from rest_framework.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "1/min"})
    assert api.get(URL).status_code == 200
    assert api.get(URL).status_code == 429


def test_the_inference_limits_allow_when_the_cache_is_unreachable(alice, unreachable_cache, settings, caplog):
    from feedback import inference

    settings.INFERENCE_RATE_PER_MINUTE = 1
    settings.INFERENCE_MAX_CONCURRENT_PER_USER = 1
    with caplog.at_level(logging.WARNING, logger="core.cache"):
        for _ in range(3):  # over both limits of 1, and still allowed
            inference.rate_allow(key="token-1")
            inference.slot_acquire(user=alice)
        inference.slot_release(user=alice)
    assert "Rate limit inference-rate:token-1 not applied" in caplog.text
    assert "INFERENCE_MAX_CONCURRENT_PER_USER not applied" in caplog.text


def test_socket_tickets_are_refused_not_failed_open_when_the_cache_is_unreachable(alice, unreachable_cache):
    from rest_framework.test import APIClient

    from feedback import ws_tickets

    client = APIClient()
    client.force_authenticate(alice)
    response = client.post("/api/assistant/ws-ticket", format="json")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "tickets_unavailable"
    assert ws_tickets.ticket_redeem(ticket="any") is None  # nobody is let in on a ticket nobody can check
