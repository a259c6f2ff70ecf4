"""ASGI entry point: HTTP through Django, the chat WebSocket through Channels: a single-use ticket
(``feedback.ws_tickets``), or session auth with an origin check of scheme, host and port
(``rlhf_site.websocket``)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlhf_site.settings")

django_asgi_app = get_asgi_application()

# Imported after Django is set up: they load models.
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from feedback.routing import websocket_urlpatterns  # noqa: E402
from feedback.ws_tickets import chat_socket_stack  # noqa: E402
from rlhf_site.websocket import SameOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": chat_socket_stack(URLRouter(websocket_urlpatterns), origin_check=SameOriginValidator),
    }
)
