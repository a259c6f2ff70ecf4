"""ASGI entry point: HTTP through Django, the chat WebSocket through Channels (session auth with the
origin checked against ALLOWED_HOSTS, or a single-use ticket: ``feedback.ws_tickets``)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlhf_site.settings")

django_asgi_app = get_asgi_application()

# Imported after Django is set up: they load models.
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from feedback.routing import websocket_urlpatterns  # noqa: E402
from feedback.ws_tickets import chat_socket_stack  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": chat_socket_stack(URLRouter(websocket_urlpatterns)),
    }
)
