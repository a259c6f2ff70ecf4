"""Tickets that open the chat socket for users without a session cookie (API token or Supabase JWT):
``POST /api/assistant/ws-ticket`` issues one, the socket URL carries it (``?ticket=...``), and the
socket's middleware redeems it once.

A ticket is a random string; the cache (Redis when REDIS_URL is set, so every server process sees
it) keeps only its SHA-256, for ``WS_TICKET_SECONDS``. Redeeming deletes it, and only the caller
whose delete removed it is let in, so a ticket opens one socket even when two race for it.

A ticket, unlike a cookie, is never sent by a browser on its own, so a socket opened with one is
not checked against ``ALLOWED_HOSTS`` for its Origin (a front-end on another origin may use it);
one opened with the session cookie still is.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddleware, get_user
from channels.middleware import BaseMiddleware
from channels.security.websocket import AllowedHostsOriginValidator
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, User
from django.core.cache import cache

from core.asyncdb import db_async
from core.cache import CACHE_ERRORS
from feedback.exceptions import FeedbackError


@dataclass(frozen=True)
class Ticket:
    ticket: str
    expires_at: float


def _key(ticket: str) -> str:
    return "ws-ticket:" + hashlib.sha256(ticket.encode()).hexdigest()


class TicketsUnavailable(FeedbackError):
    """The cache that keeps tickets cannot be reached: authentication cannot fail open."""

    http_status = 503
    code = "tickets_unavailable"


def ticket_issue(*, user: User) -> Ticket:
    seconds = settings.WS_TICKET_SECONDS
    ticket = secrets.token_urlsafe(32)
    expires_at = time.time() + seconds
    try:
        cache.set(_key(ticket), {"user": user.pk, "expires_at": expires_at}, timeout=seconds + 5)
    except CACHE_ERRORS as exc:
        raise TicketsUnavailable(
            "Socket tickets cannot be issued now (the cache is unreachable); try again shortly, or use the"
            " session cookie."
        ) from exc
    return Ticket(ticket=ticket, expires_at=expires_at)


def ticket_redeem(*, ticket: str) -> User | None:
    """The active user the ticket was issued to, if it is unused and unexpired; it is used up either way."""
    key = _key(ticket)
    try:
        stored = cache.get(key)
        if stored is None or not cache.delete(key):  # unknown, expired, or another socket redeemed it first
            return None
    except CACHE_ERRORS:  # cannot be checked: nobody is let in on it (the socket closes 4401)
        return None
    if stored["expires_at"] <= time.time():
        return None
    return get_user_model().objects.filter(pk=stored["user"], is_active=True).first()


def _ticket_of(scope: dict[str, Any]) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode(errors="replace")).get("ticket")
    return values[0] if values else None


class TicketAuthMiddleware:
    """Sets ``scope["user"]`` from a ``?ticket=`` (an invalid ticket: anonymous, never the session's user)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        ticket = _ticket_of(scope)
        if ticket is not None:
            user = await db_async(ticket_redeem)(ticket=ticket)
            scope = {**scope, "user": user or AnonymousUser()}
        return await self.inner(scope, receive, send)


class _PooledAuthMiddleware(AuthMiddleware):
    """Channels' ``AuthMiddleware`` with the session's user read on the shared database threads
    (``core.asyncdb``): Channels reads it on its one thread-sensitive thread, where every socket
    opening at once would wait in line."""

    async def resolve_scope(self, scope: dict[str, Any]) -> None:
        scope["user"]._wrapped = await db_async(get_user.func)(scope)


def _auth_stack(inner: Any) -> BaseMiddleware:
    """``channels.auth.AuthMiddlewareStack`` with ``_PooledAuthMiddleware``."""
    return CookieMiddleware(SessionMiddleware(_PooledAuthMiddleware(inner)))


def chat_socket_stack(inner: Any, *, origin_check: Any = AllowedHostsOriginValidator) -> Any:
    """The chat socket's authentication: a ticket when the URL has one, else the session cookie with
    the Origin checked by ``origin_check`` (the site passes its scheme, host and port check)."""
    with_ticket = _auth_stack(TicketAuthMiddleware(inner))
    with_cookie = origin_check(_auth_stack(inner))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        chosen = with_ticket if _ticket_of(scope) is not None else with_cookie
        return await chosen(scope, receive, send)

    return app
