"""``python manage.py monitor_versions [--json] [--advise]``: one monitor pass now, printing every
decision. ``--advise`` decides and stores without making any registry change."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.core.serializers.json import DjangoJSONEncoder

from training.monitor.service import decision_payload, monitor_pass


class Command(BaseCommand):
    help = "Run one monitor pass: decide for each canary or new deploy, act on it, and print every decision."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the decisions as a JSON list.")
        parser.add_argument(
            "--advise", action="store_true", help="Decide and store, but promote, stop or roll back nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        decisions = monitor_pass(act=False if options["advise"] else None)
        if options["json"]:
            self.stdout.write(json.dumps([decision_payload(d) for d in decisions], cls=DjangoJSONEncoder, indent=2))
            return
        if not decisions:
            self.stdout.write("Nothing to watch: no canary runs, and no deploy is waiting for a decision.")
        for decision in decisions:
            action = ""
            if decision.acted:
                action = " (done)"
            elif decision.error:
                action = f" (not done: {decision.error})"
            self.stdout.write(
                f"{decision.version.label} vs {decision.baseline.label} [{decision.mode}]: "
                f"{decision.get_decision_display().upper()}{action}\n  {decision.reason}"
            )
