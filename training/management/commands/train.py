"""``python manage.py train --kind reward|ppo|dpo|kto [--config JSON] [--set NAME=VALUE ...] [--wait] [--here]``

Creates a training run through the same service as the admin and the API; a worker on the
``training`` queue picks it up. ``--wait`` follows it with a progress bar until it finishes and exits
non-zero unless it succeeded. ``--here`` runs it in this process instead of waiting for a worker
(for a CI job or a machine without one); the claim still guarantees it runs once.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from training import services
from training.exceptions import TrainingError
from training.models import TrainingRun

BAR_WIDTH = 30
QUEUED_HINT_SECONDS = 30


def parse_settings(raw_json: str | None, pairs: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if raw_json:
        try:
            loaded = json.loads(raw_json)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--config is not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise CommandError("--config must be a JSON object, e.g. '{\"epochs\": 2}'.")
        config.update(loaded)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CommandError(f"--set {pair!r}: expected NAME=VALUE, e.g. --set epochs=2.")
        try:
            config[name] = json.loads(value)
        except json.JSONDecodeError:
            config[name] = value  # left as text: validation says what type it wants
    return config


class Command(BaseCommand):
    help = "Start a training run (reward, ppo, dpo or kto) and optionally wait for it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--kind", required=True, choices=TrainingRun.Kind.values)
        parser.add_argument("--config", metavar="JSON", help="Settings as a JSON object, e.g. '{\"epochs\": 2}'.")
        parser.add_argument(
            "--set", dest="pairs", action="append", default=[], metavar="NAME=VALUE", help="One setting (repeatable)."
        )
        parser.add_argument("--wait", action="store_true", help="Follow the run until it finishes.")
        parser.add_argument("--here", action="store_true", help="Run it in this process instead of on a worker.")
        parser.add_argument("--poll", type=float, default=1.0, help="Seconds between progress checks with --wait.")

    def handle(self, *args: Any, kind: str, config: str | None, pairs: list[str], **options: Any) -> None:
        settings_ = parse_settings(config, pairs)
        try:
            run = services.training_run_create(kind=kind, config=settings_)
        except TrainingError as exc:
            details = "".join(f"\n  {name}: {' '.join(msgs)}" for name, msgs in exc.fields.items())
            raise CommandError(f"{exc.message}{details}") from exc
        self.stdout.write(f"Queued {run} (id {run.id}) from {run.base_version.label if run.base_version else '-'}.")
        if options["here"]:
            from training import runner  # the worker's code path: the dataset processor and, lazily, torch

            runner.execute(run.id, worker=f"{socket.gethostname()}:{os.getpid()} (manage.py train --here)")
        if options["wait"] or options["here"]:
            self.follow(run.id, poll=options["poll"])

    def follow(self, run_id: int, *, poll: float) -> None:
        last = ""
        interactive = sys.stdout.isatty()
        started = time.monotonic()
        hinted = False
        while True:
            run = TrainingRun.objects.select_related("output_version").get(id=run_id)
            filled = int(run.progress * BAR_WIDTH)
            line = (
                f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {run.progress:4.0%} {run.status}"
                f" {run.phase} step {run.step}/{run.total_steps}"
            )
            if line != last:
                self.stdout.write(("\r" if interactive else "") + line, ending="" if interactive else "\n")
                self.stdout.flush()
                last = line
            if not run.is_active:
                break
            if (
                run.status == TrainingRun.Status.QUEUED
                and not hinted
                and time.monotonic() - started > QUEUED_HINT_SECONDS
            ):
                self.stderr.write(
                    f"\nStill queued after {QUEUED_HINT_SECONDS} s: is a worker consuming the training queue?"
                    " (celery -A rlhf_site worker -Q training; bin/run starts one). --here runs it in this process."
                )
                hinted = True
            time.sleep(poll)
        if interactive:
            self.stdout.write("")
        if run.status == TrainingRun.Status.SUCCEEDED and run.output_version:
            self.stdout.write(f"Registered candidate {run.output_version.label} at {run.output_version.artifact_path}.")
            self.stdout.write(json.dumps(run.metrics.get("eval", {}), indent=2, sort_keys=True))
            return
        raise CommandError(f"Run {run.id} {run.status}: {run.error_message or 'no reason recorded'}")
