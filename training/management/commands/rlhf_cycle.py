"""``python manage.py rlhf_cycle [--policy ppo|dpo|kto] [--config JSON] [--wait] [--here] [--json] [--report FILE]``

Starts one improvement cycle through the same service as the admin and the API (feedback -> reward
model -> policy -> gates -> candidate -> approval -> canary -> the monitor). ``--wait`` follows it with
a progress bar until it reaches approval, its canary, or its end, and exits non-zero if it ended
without a deployable candidate (a gate failed, a run failed, it was cancelled). ``--here`` trains its
runs in this process and never on the workers (a GPU runner: the GitHub workflow); ``--resume ID``
goes on with such a cycle after this process died. ``--json`` prints the cycle's report; ``--report
FILE`` writes it (the workflow uploads it). ``--cancel ID`` cancels a cycle. ``--token-env NAME``: the
environment variable holding an API token; the cycle is requested by the token's user (recorded,
four-eyes applies to its candidate), who needs the permission to start cycles, as in the API.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder

from training.cycle import service
from training.exceptions import TrainingError
from training.models import Cycle

BAR_WIDTH = 30
SETTLED = (Cycle.Status.AWAITING_APPROVAL, Cycle.Status.CANARY)


class Command(BaseCommand):
    help = "Run one improvement cycle: feedback -> reward model -> policy -> gates -> canary."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--policy", choices=Cycle.POLICY_KINDS, default=None, help="default: CYCLE_POLICY_KIND")
        parser.add_argument("--config", metavar="JSON", help='e.g. \'{"reward": {"epochs": 2}, "policy": {...}}\'')
        parser.add_argument("--trigger", choices=[Cycle.Trigger.MANUAL, Cycle.Trigger.WORKFLOW], default="manual")
        parser.add_argument("--wait", action="store_true", help="Follow it until approval, its canary or its end.")
        parser.add_argument("--here", action="store_true", help="Train its runs in this process.")
        parser.add_argument("--json", action="store_true", help="Print its report as JSON at the end.")
        parser.add_argument("--report", type=Path, help="Write its report (JSON) to this file at the end.")
        parser.add_argument("--cancel", type=int, metavar="ID", help="Cancel cycle ID instead.")
        parser.add_argument("--resume", type=int, metavar="ID", help="Go on with cycle ID (made with --here).")
        parser.add_argument(
            "--token-env", metavar="NAME", help="Environment variable with an API token: the cycle's requester."
        )
        parser.add_argument("--poll", type=float, default=2.0, help="Seconds between checks with --wait.")

    def handle(self, *args: Any, **options: Any) -> None:
        from django.conf import settings

        if options["cancel"]:
            try:
                cycle = service.cycle_cancel(cycle_id=options["cancel"], reason="cancelled with manage.py rlhf_cycle")
            except TrainingError as exc:
                raise CommandError(exc.message) from exc
            self.stdout.write(f"Cancelled {cycle}.")
            return
        here = options["here"]
        if options["resume"]:
            cycle = self.resumed(options["resume"], here=here)
        else:
            try:
                config = json.loads(options["config"]) if options["config"] else {}
            except json.JSONDecodeError as exc:
                raise CommandError(f"--config is not valid JSON: {exc}") from exc
            trained_by = f"{socket.gethostname()}:{os.getpid()} (manage.py rlhf_cycle --here)" if here else ""
            requested_by = self.token_user(options["token_env"]) if options["token_env"] else None
            try:
                cycle = service.cycle_create(
                    policy_kind=options["policy"] or settings.CYCLE_POLICY_KIND,
                    trigger=options["trigger"],
                    config=config,
                    trained_by=trained_by,
                    requested_by=requested_by,
                )
            except TrainingError as exc:
                details = "".join(f"\n  {name}: {' '.join(msgs)}" for name, msgs in exc.fields.items())
                raise CommandError(f"{exc.message}{details}") from exc
            self.stdout.write(f"Started {cycle}.")
        if options["wait"] or options["here"]:
            cycle = self.follow(cycle.pk, here=options["here"], poll=options["poll"])
        report = service.cycle_report(cycle)
        if options["report"]:
            options["report"].write_text(json.dumps(report, cls=DjangoJSONEncoder, indent=2))
        if options["json"]:
            self.stdout.write(json.dumps(report, cls=DjangoJSONEncoder, indent=2))
        if options["wait"] or options["here"]:
            self.summarise(cycle)

    def token_user(self, name: str) -> Any:
        from rest_framework.authtoken.models import Token

        key = os.environ.get(name, "")
        if not key:
            raise CommandError(f"${name} is empty: set it to an API token (Admin > Tokens).")
        token = Token.objects.select_related("user").filter(key=key).first()
        if token is None or not token.user.is_active:
            raise CommandError(f"The API token in ${name} is not a valid token of an active user.")
        if not token.user.has_perm("training.start_cycle"):
            raise CommandError(f"{token.user.get_username()} may not start improvement cycles (training.start_cycle).")
        return token.user

    def resumed(self, cycle_id: int, *, here: bool) -> Cycle:
        cycle = Cycle.objects.filter(pk=cycle_id).first()
        if cycle is None:
            raise CommandError(f"Cycle {cycle_id} does not exist.")
        if here and not cycle.trained_by:
            raise CommandError(f"{cycle}'s runs are trained by the workers; follow it with --resume {cycle_id} --wait.")
        if not cycle.is_active:
            raise CommandError(f"{cycle} has ended: {cycle.get_status_display().lower()}.")
        self.stdout.write(f"Resuming {cycle}.")
        return cycle

    def follow(self, cycle_id: int, *, here: bool, poll: float) -> Cycle:
        self.last = ""
        while True:
            if here:
                service.cycle_run_here(cycle_id, on_step=self.show)
            cycle = service.cycle_advance(cycle_id)
            self.show(cycle)
            if not cycle.is_active or cycle.status in SETTLED:
                return cycle
            time.sleep(poll)

    def show(self, cycle: Cycle) -> None:
        progress = service.cycle_progress(cycle)
        filled = int(progress * BAR_WIDTH)
        line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {progress:4.0%} {cycle.status} {cycle.stage}"
        if line != self.last:
            self.stdout.write(line)
            sys.stdout.flush()
            self.last = line

    def summarise(self, cycle: Cycle) -> None:
        label = cycle.candidate.label if cycle.candidate else "-"
        for gate in cycle.gates:
            mark = "pass" if gate["passed"] else "FAIL"
            self.stdout.write(f"  gate {gate['name']:20} {mark}  {gate['detail']}")
        if cycle.status == Cycle.Status.AWAITING_APPROVAL:
            self.stdout.write(f"{label} passed every gate: approve it to start its canary.")
        elif cycle.status == Cycle.Status.CANARY:
            self.stdout.write(f"{label} is in canary; the monitor decides.")
        elif cycle.status in (Cycle.Status.NOT_DEPLOYED, Cycle.Status.FAILED, Cycle.Status.CANCELLED):
            raise CommandError(f"{cycle} {cycle.get_status_display().lower()}: {cycle.reason}")
        else:
            self.stdout.write(f"{cycle} {cycle.get_status_display().lower()}: {cycle.reason}")
