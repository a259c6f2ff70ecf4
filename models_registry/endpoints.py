"""Which OpenAI-compatible servers a version may be served from.

A version served by the ``openai`` backend sends every user's conversation, and
``SERVING_OPENAI_API_KEY``, to its ``base_url``. So a base URL must name a host on
``SERVING_OPENAI_ALLOWED_HOSTS``; registration refuses any other, and serving checks again before it
loads a version or sends the key (a version registered before the list changed is refused too).

Entries: ``host`` (any port), ``host:port``, ``*.example.com`` (any subdomain, not the domain
itself), ``[::1]`` or ``[::1]:8001`` for IPv6. Host names compare case-insensitively.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings


def _host_port(netloc_host: str | None, port: int | None) -> tuple[str, int | None]:
    return (netloc_host or "").lower().rstrip("."), port


def _parse_entry(entry: str) -> tuple[str, int | None] | None:
    entry = entry.strip().lower()
    if not entry:
        return None
    if entry.count(":") > 1 and not entry.startswith("["):  # a bare IPv6 address: any port
        return entry, None
    try:
        parts = urlsplit(f"//{entry}")
        return _host_port(parts.hostname, parts.port)
    except ValueError:
        return None


def base_url_problem(base_url: str) -> str | None:
    """Why ``base_url`` may not be used, or None when it may."""
    try:
        parts = urlsplit(base_url)
        host, port = _host_port(parts.hostname, parts.port)
    except ValueError:
        return f"{base_url!r} is not a valid URL."
    if parts.scheme not in ("http", "https") or not host:
        return f"{base_url!r} must be an http:// or https:// URL with a host."
    if parts.username or parts.password:
        return "The base URL must not carry credentials; set SERVING_OPENAI_API_KEY instead."
    if parts.query or parts.fragment:
        return "The base URL must not have a query or a fragment."
    for entry in settings.SERVING_OPENAI_ALLOWED_HOSTS:
        parsed = _parse_entry(entry)
        if parsed is None:
            continue
        allowed_host, allowed_port = parsed
        if allowed_port is not None and allowed_port != port:
            continue
        if allowed_host.startswith("*."):
            if host.endswith(allowed_host[1:]) and host != allowed_host[2:]:
                return None
        elif host == allowed_host:
            return None
    listed = ", ".join(settings.SERVING_OPENAI_ALLOWED_HOSTS) or "nothing"
    shown = f"{host}:{port}" if port is not None else host
    return (
        f"{shown} is not on SERVING_OPENAI_ALLOWED_HOSTS (which allows {listed}); an operator must add it there first."
    )


def base_url_allowed(base_url: str) -> bool:
    return base_url_problem(base_url) is None
