"""``python manage.py export_feedback --format FORMAT PATH [--split train|test|all] [--seed N] [--test-fraction F]``

Writes one dataset of the feedback processor (same rules, streamed) to PATH as JSON Lines, without
recording a ``DatasetSnapshot``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from training.processor import EXPORT_FORMATS, ProcessorOptions, feedback_export

FORMAT_HELP = (
    "trl-preference: TRL preference rows {prompt, chosen, rejected} (reward model, DPO); "
    "trl-unpaired: TRL unpaired rows {prompt, completion, label} (KTO); "
    'openai-jsonl: OpenAI fine-tuning chat rows {"messages": [...prompt, answer]} made from the '
    "positively labelled answers only (a rating >= --good-rating, or thumbs up)."
)


class Command(BaseCommand):
    help = "Export feedback as a JSON Lines dataset (TRL preference, TRL unpaired, or OpenAI chat fine-tuning)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", metavar="PATH", help="File to write (replaced if it exists).")
        parser.add_argument("--format", required=True, choices=list(EXPORT_FORMATS), help=FORMAT_HELP)
        parser.add_argument(
            "--split", choices=["train", "test", "all"], default="all", help="Which split to write (all)."
        )
        parser.add_argument("--seed", type=int, default=0, help="Seed of the train/test split (0).")
        parser.add_argument("--test-fraction", type=float, default=0.1, help="Share of conversations in test (0.1).")
        parser.add_argument("--good-rating", type=int, default=4, help="Ratings at or above this are good (4).")
        parser.add_argument("--bad-rating", type=int, default=2, help="Ratings at or below this are bad (2).")

    def handle(self, *args: Any, **opts: Any) -> None:
        path = Path(opts["path"])
        if path.is_dir():
            raise CommandError(f"{path} is a folder; give a file path.")
        if not path.parent.is_dir():
            raise CommandError(f"Cannot write {path}: folder {path.parent} does not exist.")
        try:
            options = ProcessorOptions(
                seed=opts["seed"],
                test_fraction=opts["test_fraction"],
                good_rating=opts["good_rating"],
                bad_rating=opts["bad_rating"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        try:
            rows = feedback_export(options=options, fmt=opts["format"], path=path, split=opts["split"])
        except OSError as exc:
            raise CommandError(f"Cannot write {path}: {exc.strerror or exc}") from exc
        self.stdout.write(f"Wrote {rows} rows ({opts['format']}, split {opts['split']}) to {path}.")
