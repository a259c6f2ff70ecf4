"""The chat socket's origin check: a handshake is accepted only from a page of this very site.

Channels' ``AllowedHostsOriginValidator`` compares the Origin's host with ALLOWED_HOSTS only, so a
page served on another port or over plain http of an allowed host (another app on the same machine,
a captive portal) could open a socket with the user's cookies. Here the Origin's scheme, host and
port must equal the socket's own: ``http://`` + Host for ``ws``, ``https://`` + Host for ``wss`` (or
when SECURE_PROXY_SSL_HEADER says the proxy in front took TLS), with Host in ALLOWED_HOSTS; or the
Origin is one of CSRF_TRUSTED_ORIGINS exactly.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]


def origin_allowed(scope: dict[str, Any]) -> bool:
    headers = {name.lower(): value.decode("latin1") for name, value in scope.get("headers", [])}
    origin = _origin_tuple(headers.get(b"origin", ""))
    host = headers.get(b"host", "")
    if origin is None:
        return False
    if any(origin == _origin_tuple(trusted) for trusted in settings.CSRF_TRUSTED_ORIGINS):
        return True
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    secure = scope.get("scheme") == "wss"
    if settings.SECURE_PROXY_SSL_HEADER:
        meta_name, expected = settings.SECURE_PROXY_SSL_HEADER
        header = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode()
        secure = secure or headers.get(header, "").split(",")[0].strip() == expected
    return origin == _origin_tuple(f"{'https' if secure else 'http'}://{host}")


class SameOriginValidator:
    """ASGI middleware: denies a WebSocket handshake whose Origin fails ``origin_allowed``."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
