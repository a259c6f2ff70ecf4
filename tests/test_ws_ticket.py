"""Tickets that open the chat socket for API-token and JWT users: single use, short-lived, the
user's own conversations only; the session cookie keeps working beside them."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.cache import cache

from feedback import ws_tickets
from rlhf_site.asgi import application
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


async def connect(conversation, ticket: str, origin: str = "https://app.example.com"):
    headers = [(b"origin", origin.encode()), (b"host", b"testserver")]
    path = f"/ws/chat/{conversation.id}/?ticket={ticket}"
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect()
    if connected:
        await communicator.disconnect()
    return connected, code


def issue(api) -> dict:
    response = api.post("/api/assistant/ws-ticket", format="json")
    assert response.status_code == 201, response.content
    return response.json()


async def test_a_token_user_opens_the_socket_once_with_a_ticket_from_another_origin(api, conversation, settings):
    body = await sync_to_async(issue)(api)
    assert body["expires_in"] == settings.WS_TICKET_SECONDS
    assert await connect(conversation, body["ticket"]) == (True, None)
    assert await connect(conversation, body["ticket"]) == (False, 4401)  # used up


async def test_an_expired_ticket_is_refused(api, conversation, monkeypatch):
    ticket = (await sync_to_async(issue)(api))["ticket"]
    later = ws_tickets.time.time() + 31
    monkeypatch.setattr(ws_tickets.time, "time", lambda: later)
    assert await connect(conversation, ticket) == (False, 4401)
    assert await sync_to_async(cache.get)(ws_tickets._key(ticket)) is None


async def test_a_ticket_opens_only_its_users_conversations(api, db):
    bobs = await sync_to_async(ConversationFactory)(user=await sync_to_async(UserFactory)(username="bob"))
    ticket = (await sync_to_async(issue)(api))["ticket"]
    assert await connect(bobs, ticket) == (False, 4404)


async def test_an_unknown_ticket_is_refused_even_with_a_session(conversation, alice):
    from django.test import Client

    client = Client()
    await sync_to_async(client.force_login)(alice)
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver"),
               (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]  # fmt: skip
    communicator = WebsocketCommunicator(application, f"/ws/chat/{conversation.id}/?ticket=forged", headers=headers)
    assert await communicator.connect() == (False, 4401)


def test_a_ticket_needs_an_authenticated_caller(client, db):
    assert client.post("/api/assistant/ws-ticket").status_code == 401


def test_racing_sockets_redeem_a_ticket_once(alice, monkeypatch):
    ticket = ws_tickets.ticket_issue(user=alice).ticket
    stored = cache.get(ws_tickets._key(ticket))
    assert ws_tickets.ticket_redeem(ticket=ticket) == alice
    # A second socket that read the ticket before the first deleted it: its delete removes nothing.
    monkeypatch.setattr(ws_tickets.cache, "get", lambda key: stored)
    assert ws_tickets.ticket_redeem(ticket=ticket) is None
