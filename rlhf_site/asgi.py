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
"""

import os

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
from rlhf_site.websocket import SameOriginValidator  # noqa: E402

# Paths whose views are async (a test checks that every async view in the URLconf is under one).
ASYNC_HTTP_PREFIXES = ("/v1/",)

wsgi_in_threads = WSGIMiddleware(django_wsgi_app, workers=settings.HTTP_THREADS)


async def http(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["path"].startswith(ASYNC_HTTP_PREFIXES):
        return await django_asgi_app(scope, receive, send)
    return await wsgi_in_threads(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http,
        "websocket": chat_socket_stack(URLRouter(websocket_urlpatterns), origin_check=SameOriginValidator),
    }
)
