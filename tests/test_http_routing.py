"""The ASGI application's HTTP routing (``rlhf_site.asgi``): sync views under Django's WSGI handler on a
pool of threads (one thread per request instead of a hop per middleware hook), the async inference
API under the ASGI handler; every async view is where the ASGI handler serves it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_started
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.authtoken.models import Token

from feedback.models import Feedback
from rlhf_site.asgi import ASYNC_HTTP_PREFIXES, application
from tests.factories import AssistantMessageFactory, ConversationFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _views(resolver: URLResolver, prefix: str = "/"):
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern).lstrip("^").replace("\\Z", "").replace("$", "")
        if isinstance(entry, URLResolver):
            yield from _views(entry, route)
        elif isinstance(entry, URLPattern):
            yield route, entry.callback


def test_every_async_view_is_served_by_the_asgi_handler():
    async_views = [(route, view) for route, view in _views(get_resolver()) if asyncio.iscoroutinefunction(view)]
    assert async_views, "the inference API's views are async"
    for route, view in async_views:
        assert route.startswith(ASYNC_HTTP_PREFIXES), f"{route} ({view.__name__}) is async but served under WSGI"


@pytest.fixture
def handlers():
    seen: list[type] = []

    def started(sender, **kwargs):
        seen.append(sender)

    request_started.connect(started)
    yield seen
    request_started.disconnect(started)


async def test_the_rest_api_runs_under_wsgi_and_the_inference_api_under_asgi(alice, handlers):
    token = await sync_to_async(lambda: Token.objects.create(user=alice).key)()
    answer = await sync_to_async(lambda: AssistantMessageFactory(conversation=ConversationFactory(user=alice)))()
    transport = httpx.ASGITransport(app=application)
    headers = {"Authorization": f"Token {token}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", headers=headers) as client:
        created = await client.post("/api/assistant/feedback", json={"message_id": str(answer.id), "thumbs": "up"})
        models = await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})

    assert created.status_code == 201, created.text
    assert created.json()["thumbs"] == "up"
    stored = await sync_to_async(Feedback.objects.get)(message_id=answer.id)
    assert (stored.user_id, stored.thumbs) == (alice.id, "up")
    assert models.status_code == 200
    assert handlers == [WSGIHandler, ASGIHandler]
