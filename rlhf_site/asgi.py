"""ASGI entry point: the chat WebSocket through Channels: a single-use ticket (``feedback.ws_tickets``),
or session auth with an origin check of scheme, host and port (``rlhf_site.websocket``); HTTP through
Django, in one of two ways.

- The inference API (``ASYNC_HTTP_PREFIXES``: its views are async and stream) goes to Django's ASGI
  handler, on the event loop.
- Every other request (the REST API, the pages, the admin, ``/metrics``: sync views) goes to Django's
  WSGI handler on a pool of ``HTTP_THREADS`` threads (a2wsgi), as a WSGI server beside the ASGI one
  would serve it, in the same process. Under the ASGI handler a sync view costs a thread hop for the
  view and for each hook of each middleware (about 20 per request, a third of a feedback request's
  server CPU; README, "Feedback API under load"); here the whole request runs in one thread.

What Django's ASGI handler did that a2wsgi does not is done here first (``as_django_reads``): headers
with an underscore in the name are dropped (``X_Forwarded_For`` would otherwise join
``X-Forwarded-For`` and spoof the client address the rate limits use); a chunked body is read whole
and given a Content-Length (WSGI reads Content-Length bytes, so it would arrive empty); and bytes
outside ASCII in the query string are percent-encoded (a2wsgi decodes it as ASCII: a plain-text 500).
"""

import json
import os
import string
from urllib.parse import quote_from_bytes

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlhf_site.settings")

django_asgi_app = get_asgi_application()
django_wsgi_app = get_wsgi_application()

# Imported after Django is set up: they load models.
from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from feedback.routing import websocket_urlpatterns  # noqa: E402
from feedback.ws_tickets import chat_socket_stack  # noqa: E402
from rlhf_site.lifespan import lifespan  # noqa: E402
from rlhf_site.websocket import SameOriginValidator  # noqa: E402

# Paths whose views are async (a test checks that every async view in the URLconf is under one).
ASYNC_HTTP_PREFIXES = ("/v1/",)

wsgi_in_threads = WSGIMiddleware(django_wsgi_app, workers=settings.HTTP_THREADS)


_QUERY_SAFE = string.printable.strip() + " "


async def http(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["path"].startswith(ASYNC_HTTP_PREFIXES):
        return await django_asgi_app(scope, receive, send)
    scope = as_django_reads(scope)
    names = {name for name, _ in scope["headers"]}
    if b"transfer-encoding" in names and b"content-length" not in names:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if settings.DATA_UPLOAD_MAX_MEMORY_SIZE is not None and len(body) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
                return await _too_large(send)
            if not message.get("more_body", False):
                break
        headers = [(k, v) for k, v in scope["headers"] if k != b"transfer-encoding"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        receive = _replay(body, receive)
    return await wsgi_in_threads(scope, receive, send)


def as_django_reads(scope):  # type: ignore[no-untyped-def]
    """``scope`` with the headers Django's ASGI handler ignores dropped and the query string ASCII."""
    query = scope.get("query_string", b"")
    if not query.isascii():
        query = quote_from_bytes(query, safe=_QUERY_SAFE).encode()
    headers = [(name, value) for name, value in scope["headers"] if b"_" not in name]
    return {**scope, "headers": headers, "query_string": query}


def _replay(body, receive):  # type: ignore[no-untyped-def]
    sent = False

    async def replayed():  # type: ignore[no-untyped-def]
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: what the client does next (a disconnect)

    return replayed


async def _too_large(send):  # type: ignore[no-untyped-def]
    from core.errors import error_body

    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json.dumps(error_body(413, "request_too_large", f"The request body is over {limit} bytes.")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


application = ProtocolTypeRouter(
    {
        "http": http,
        "lifespan": lifespan,  # warms the process up before its first connection
        "websocket": chat_socket_stack(URLRouter(websocket_urlpatterns), origin_check=SameOriginValidator),
    }
)
