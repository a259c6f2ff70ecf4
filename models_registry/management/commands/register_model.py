"""``python manage.py register_model --kind policy (--base-url URL --model-name NAME | --artifact PATH)``

Registers a new candidate version through ``model_version_register`` (with its registration event),
so that a policy served by an external OpenAI-compatible server (vLLM, TGI, Ollama), or a local
checkpoint, can be approved and deployed like a trained one. It never makes the version live. The
base URL's host must be on ``SERVING_OPENAI_ALLOWED_HOSTS``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_registry.artifacts import sha256_tree
from models_registry.exceptions import RegistryError
from models_registry.models import ModelVersion
from models_registry.services import model_version_register


class Command(BaseCommand):
    help = "Register a candidate model version: an OpenAI-compatible server's model, or a local checkpoint folder."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--kind", choices=ModelVersion.Kind.values, default=ModelVersion.Kind.POLICY)
        served = parser.add_mutually_exclusive_group(required=True)
        served.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://10.0.0.5:8000/v1")
        served.add_argument("--artifact", type=Path, help="A local Hugging Face checkpoint folder.")
        parser.add_argument("--model-name", default="", help="The model's name on that server (with --base-url).")
        parser.add_argument("--metrics", default="{}", help="A JSON object stored as the version's metrics.")
        parser.add_argument("--reason", default="", help="Why; kept on the registration event.")
        parser.add_argument("--as-user", default="", help="Record this user as the one who registered it.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            metrics = json.loads(options["metrics"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--metrics is not valid JSON: {exc}") from exc
        if not isinstance(metrics, dict):
            raise CommandError("--metrics must be a JSON object.")
        actor = None
        if options["as_user"]:
            actor = get_user_model().objects.filter(username=options["as_user"]).first()
            if actor is None:
                raise CommandError(f"No user {options['as_user']!r}.")
        fields: dict[str, Any]
        if options["base_url"]:
            if not options["model_name"]:
                raise CommandError("--model-name is needed with --base-url.")
            fields = {
                "backend": ModelVersion.Backend.OPENAI,
                "base_url": options["base_url"],
                "model_name": options["model_name"],
                "artifact_path": "",
                "checksums": {},
            }
        else:
            folder = options["artifact"].resolve()
            if not folder.is_dir():
                raise CommandError(f"{folder} is not a folder.")
            fields = {"artifact_path": str(folder), "checksums": sha256_tree(folder)}
        try:
            version = model_version_register(
                kind=options["kind"],
                metrics=metrics,
                actor=actor,
                reason=options["reason"] or "register_model",
                **fields,
            )
        except RegistryError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Registered {version.label} as a candidate; approve and deploy it in the admin or the API.")
