"""The ASGI application's HTTP routing (``rlhf_site.asgi``): sync views under Django's WSGI handler on a
pool of threads (one thread per request instead of a hop per middleware hook), the async inference
API under the ASGI handler; every async view is where the ASGI handler serves it."""

from __future__ import annotations

import asyncio
import json

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


async def _call(path: str, *, query: bytes = b"", headers=(), body: bytes = b"", method: str = "GET"):
    """One request straight into the ASGI application, as uvicorn would make it (raw bytes)."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query,
        "headers": [(b"host", b"testserver"), *headers], "client": ("10.0.0.7", 1234), "server": ("testserver", 80),
    }  # fmt: skip
    await application(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_headers_with_underscores_are_dropped_as_djangos_asgi_handler_drops_them():
    seen: list[dict] = []

    def started(sender, environ=None, **kwargs):
        seen.append(environ or {})

    request_started.connect(started)
    try:
        await _call(
            "/api/assistant/satisfaction", headers=[(b"x_forwarded_for", b"6.6.6.6"), (b"x-forwarded-for", b"10.0.0.1")]
        )
    finally:
        request_started.disconnect(started)
    assert seen[0]["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"  # not "10.0.0.1,6.6.6.6"


async def test_bytes_outside_ascii_in_a_query_string_get_the_json_error_not_a_500(alice):
    token = await sync_to_async(lambda: Token.objects.create(user=alice).key)()
    auth = (b"authorization", f"Token {token}".encode())
    status, body = await _call("/api/assistant/feedback", query="message_id=é".encode(), headers=[auth])
    assert status == 400
    assert json.loads(body)["error"]["fields"] == {"message_id": ["Must be a valid UUID."]}


async def test_a_chunked_body_is_read_whole(alice):
    token = await sync_to_async(lambda: Token.objects.create(user=alice).key)()
    answer = await sync_to_async(lambda: AssistantMessageFactory(conversation=ConversationFactory(user=alice)))()

    async def chunks():
        yield b'{"message_id": "' + str(answer.id).encode()
        yield b'", "thumbs": "down"}'

    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(
            "/api/assistant/feedback",
            content=chunks(),  # no Content-Length: Transfer-Encoding chunked
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        )
    assert response.status_code == 201, response.text
    assert await sync_to_async(lambda: Feedback.objects.get(message_id=answer.id).thumbs)() == "down"
