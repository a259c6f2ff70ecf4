"""``python manage.py rlhf_cycle [--policy ppo|dpo|kto] [--config JSON] [--wait] [--here] [--json] [--report FILE]``

Starts one improvement cycle through the same service as the admin and the API (feedback -> reward
model -> policy -> gates -> candidate -> approval -> canary -> the monitor). ``--wait`` follows it with
a progress bar until it reaches approval, its canary, or its end, and exits non-zero if it ended
without a deployable candidate (a gate failed, a run failed, it was cancelled). ``--here`` trains its
runs in this process (no worker needed). ``--json`` prints the cycle's report; ``--report FILE``
writes it (the GitHub workflow uploads it). ``--cancel ID`` cancels a cycle.
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

from training import runner
from training.cycle import service
from training.exceptions import TrainingError
from training.models import Cycle, TrainingRun

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
        config = json.loads(options["config"]) if options["config"] else {}
        try:
            cycle = service.cycle_create(
                policy_kind=options["policy"] or settings.CYCLE_POLICY_KIND, trigger=options["trigger"], config=config
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

    def follow(self, cycle_id: int, *, here: bool, poll: float) -> Cycle:
        worker = f"{socket.gethostname()}:{os.getpid()} (manage.py rlhf_cycle --here)"
        last = ""
        while True:
            cycle = service.cycle_advance(cycle_id)
            if here:
                for run in (cycle.reward_run, cycle.policy_run):
                    if run is not None and run.status == TrainingRun.Status.QUEUED:
                        runner.execute(run.pk, worker=worker)
                        cycle = service.cycle_advance(cycle_id)
            cycle = Cycle.objects.select_related("reward_run", "policy_run", "candidate", "canary").get(pk=cycle_id)
            progress = service.cycle_progress(cycle)
            filled = int(progress * BAR_WIDTH)
            line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {progress:4.0%} {cycle.status} {cycle.stage}"
            if line != last:
                self.stdout.write(line)
                sys.stdout.flush()
                last = line
            if not cycle.is_active or cycle.status in SETTLED:
                return cycle
            time.sleep(poll)

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
