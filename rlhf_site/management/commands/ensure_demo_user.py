"""Create the demo superuser once. Its password is DEMO_PASSWORD, or one made up and printed once."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the demo superuser (DEMO_USERNAME, default 'demo') if it does not exist yet."

    def handle(self, *args: Any, **options: Any) -> None:
        username = os.environ.get("DEMO_USERNAME") or "demo"
        user_model = get_user_model()
        if user_model.objects.filter(username=username).exists():
            self.stdout.write(f"Demo user '{username}' exists; password unchanged.")
            return
        chosen = os.environ.get("DEMO_PASSWORD")
        password = chosen or secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username=username, email="", password=password)
        if chosen:
            self.stdout.write(f"Created demo superuser '{username}' with the password from DEMO_PASSWORD.")
            return
        self.stdout.write(
            self.style.WARNING(f"Created demo superuser '{username}' with password: {password}")
            + "  (shown once; set DEMO_PASSWORD to choose it)"
        )
