from typing import Any

from django.conf import settings
from django.http import HttpRequest


def chat(request: HttpRequest) -> dict[str, Any]:
    return {"signup_enabled": settings.CHAT_SIGNUP_ENABLED}
