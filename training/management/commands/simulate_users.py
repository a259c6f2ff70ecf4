"""``python manage.py simulate_users [--preference closing_offer] [--policy ppo|dpo|kto] [--seed N] [--json]``

Simulated users with a hidden preference chat with the live policy through the real WebSocket and
REST API (a uvicorn server this command starts), regenerate, vote A/B and rate; one improvement
cycle runs on their feedback, its candidate is canaried while they keep chatting, and the monitor
decides; then a deliberately worse candidate is canaried and the monitor must stop it. Prints the
share of answers meeting the preference before and after, the reward model's held-out accuracy, the
gates and the monitor's decisions (``--json``: the whole report). Run it on a database of its own,
after ``migrate`` and ``bootstrap_models``: it trains, deploys and rolls out on it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder

from training.exceptions import TrainingError
from training.ml.preferences import PREFERENCES
from training.simulation.experiment import Plan, run
from training.simulation.users import SimulationError


class Command(BaseCommand):
    help = "Simulated users with a hidden preference, one improvement cycle, its canary, and the monitor's decision."

    def add_arguments(self, parser: CommandParser) -> None:
        defaults = Plan()
        parser.add_argument("--preference", choices=sorted(PREFERENCES), default=defaults.preference)
        parser.add_argument("--policy", choices=["ppo", "dpo", "kto"], default=defaults.policy)
        parser.add_argument("--users", type=int, default=defaults.users)
        parser.add_argument(
            "--before",
            type=int,
            default=defaults.before,
            help="Conversations before the cycle (0: go on from the simulated users' stored answers).",
        )
        parser.add_argument(
            "--during", type=int, default=defaults.during, help="At most this many conversations during a canary."
        )
        parser.add_argument(
            "--after", type=int, default=defaults.after, help="Conversations after a promotion (0: none)."
        )
        parser.add_argument("--canary-share", type=float, default=defaults.canary_share)
        parser.add_argument("--monitor-every", type=int, default=defaults.monitor_every)
        parser.add_argument("--heldout-pairs", type=int, default=defaults.heldout_pairs)
        parser.add_argument("--no-worse", action="store_true", help="Skip the planted worse candidate.")
        parser.add_argument("--seed", type=int, default=defaults.seed)
        parser.add_argument("--config", default="{}", help='Run configs: {"reward": {...}, "policy": {...}}')
        parser.add_argument("--json", action="store_true", help="Print the whole report as JSON.")
        parser.add_argument("--report", type=Path, help="Also write the report (JSON) to this file.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["before"] < 0:
            raise CommandError("--before must be at least 0.")
        for name in ("users", "during", "monitor_every"):
            if options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1.")
        if not 0 < options["canary_share"] < 1:
            raise CommandError("--canary-share must be between 0 and 1.")
        try:
            config = json.loads(options["config"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--config is not valid JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise CommandError("--config must be a JSON object.")
        plan = Plan(
            preference=options["preference"],
            policy=options["policy"],
            users=options["users"],
            before=options["before"],
            during=options["during"],
            after=max(0, options["after"]),
            canary_share=options["canary_share"],
            monitor_every=options["monitor_every"],
            heldout_pairs=max(0, options["heldout_pairs"]),
            worse=not options["no_worse"],
            seed=options["seed"],
            config=config,
        )
        workdir = Path(settings.VAR_DIR) / "simulations" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
        log = (lambda line: self.stderr.write(line)) if options["json"] else self.stdout.write
        try:
            report = run(plan, log=log, workdir=workdir)
        except (SimulationError, TrainingError) as exc:
            raise CommandError(str(exc)) from exc
        text = json.dumps(report, cls=DjangoJSONEncoder, indent=2)
        (workdir / "report.json").write_text(text + "\n", encoding="utf-8")
        if options["report"]:
            options["report"].write_text(text + "\n", encoding="utf-8")
        if options["json"]:
            self.stdout.write(text)
            return
        self.stdout.write("")
        self.stdout.write(f"Preference '{plan.preference}', policy by {plan.policy.upper()}, seed {plan.seed}:")
        for key, value in report["summary"].items():
            self.stdout.write(f"  {key}: {value}")
        self.stdout.write(f"The whole report: {workdir / 'report.json'}")
