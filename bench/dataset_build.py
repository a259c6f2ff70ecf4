"""Benchmark of the feedback processor (``training.processor.snapshot_build``) on PostgreSQL.

Run by hand (not a test)::

    .venv/bin/python bench/dataset_build.py --rows 100000 --rows 1000000 [--repeat 3]

For each ``--rows N`` it:

1. Creates the database ``--db`` (default ``rlhf_bench_dataset``) if it is missing and migrates it,
   empties the feedback tables and seeds at least N feedback rows with COPY: conversations of 1-3
   turns (10% open with a system message, a first question drawn from 2,000 common ones so the same
   prompt recurs across conversations), 1-2 answers per turn (regenerations; 4% failed), 3 steps an
   answer, message feedback from 1-3 of 200 users (thumbs, rating or both), step feedback on 20% of
   answers, comparisons on half of the regenerated turns (5% ties), personal data in 5% of texts.
2. Runs ``snapshot_build`` ``--repeat`` times, each in a fresh child process, and reports the build's
   wall time, rows read per second, feedback rows per second, and the child's peak RSS (ru_maxrss
   after the build; the baseline after ``django.setup()`` is shown too).

Goal: 1M feedback rows in <= 60 s within <= 500 MB, growing linearly.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, ensure_database, setup_django

GOAL_SECONDS = 60.0
GOAL_MB = 500.0
QUESTIONS = 2000
RATERS = 200

PII = [
    "my email is jane.doe{n}@example.com",
    "call me at +1 415 555 {n:04d}",
    "my key is sk-proj-{n:06d}AbCdEfGhIjKlMnOpQr",
    "token ghp_{n:06d}abcdefghijklmnopqrstuvwxyz0123",
]


def _text(rng: random.Random, base: str, n: int) -> str:
    if rng.random() < 0.05:
        return f"{base} ({rng.choice(PII).format(n=n)})"
    return base


def seed(rows: int, rng: random.Random) -> dict[str, int]:
    """Empty the feedback tables and COPY in at least ``rows`` feedback rows; counts per table."""
    from django.contrib.auth.models import User
    from django.db import connection

    raters = []
    for i in range(RATERS):
        user, _ = User.objects.get_or_create(username=f"bench-rater-{i:03d}")
        raters.append(user.id)
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE feedback_comparison, feedback_feedback, feedback_messagestep, feedback_message,"
            " feedback_conversation, training_datasetsnapshot RESTART IDENTITY CASCADE"
        )
    conversations: list[tuple[Any, ...]] = []
    messages: list[tuple[Any, ...]] = []
    steps: list[tuple[Any, ...]] = []
    feedback: list[tuple[Any, ...]] = []
    comparisons: list[tuple[Any, ...]] = []
    counts = dict.fromkeys(("conversations", "messages", "steps", "feedback", "comparisons"), 0)
    at = datetime.now(UTC) - timedelta(days=30)
    step_id = 0
    tick = timedelta(microseconds=1)

    def flush() -> None:
        for name, data in (("conversations", conversations), ("messages", messages), ("steps", steps),
                           ("feedback", feedback), ("comparisons", comparisons)):  # fmt: skip
            counts[name] += len(data)
        with connection.cursor() as cursor:
            raw = cursor.cursor  # psycopg's cursor
            for table, columns, data in (
                ("feedback_conversation", "id, user_id, title, created_at", conversations),
                (
                    "feedback_message",
                    "id, conversation_id, role, content, parent_id, status, error, created_at",
                    messages,
                ),
                ("feedback_messagestep", "id, message_id, index, content", steps),
                (
                    "feedback_feedback",
                    "user_id, message_id, step_id, thumbs, rating, comment, tags, created_at, updated_at",
                    feedback,
                ),
                (
                    "feedback_comparison",
                    "user_id, prompt_id, chosen_id, rejected_id, is_tie, pair_key, created_at, updated_at",
                    comparisons,
                ),
            ):
                with raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in data:
                        copy.write_row(row)
                data.clear()

    n = 0
    while counts["feedback"] + len(feedback) < rows:
        n += 1
        owner = rng.choice(raters)
        conv = uuid.uuid4()
        at += timedelta(seconds=1)
        conversations.append((conv, owner, f"Bench {n}", at))
        if rng.random() < 0.10:
            at += tick
            messages.append((uuid.uuid4(), conv, "system", "You are a helpful cook.", None, "complete", "", at))
        for t in range(rng.randint(1, 3)):
            prompt = uuid.uuid4()
            base = f"How do I cook dish {rng.randrange(QUESTIONS)}?" if t == 0 else f"And then what, step {n}-{t}?"
            at += tick
            messages.append((prompt, conv, "user", _text(rng, base, n), None, "complete", "", at))
            answers = []
            for _ in range(1 if rng.random() < 0.6 else 2):
                answer = uuid.uuid4()
                failed = rng.random() < 0.04
                parts = [
                    _text(rng, f"{i}. Do thing {rng.randrange(50)} for {rng.randrange(1, 20)} minutes.", n)
                    for i in (1, 2, 3)
                ]
                at += tick
                status = "failed" if failed else "complete"
                messages.append((answer, conv, "assistant", "" if failed else "\n".join(parts), prompt, status, "", at))
                if failed:
                    continue
                ids = []
                for index, part in enumerate(parts):
                    step_id += 1
                    ids.append(step_id)
                    steps.append((step_id, answer, index, part))
                answers.append(answer)
                for user in rng.sample(raters, rng.randint(1, 3)):
                    kind = rng.random()
                    thumbs = None if kind < 0.4 else rng.choice(["up", "down"])
                    rating = None if kind >= 0.7 else rng.randint(1, 5)
                    feedback.append((user, answer, None, thumbs, rating, "", "[]", at, at))
                if rng.random() < 0.2:
                    user = rng.choice(raters)
                    for index in rng.sample(range(3), rng.randint(1, 2)):
                        feedback.append((user, answer, ids[index], rng.choice(["up", "down"]), None, "", "[]", at, at))
            if len(answers) == 2 and rng.random() < 0.5:
                chosen, rejected = rng.sample(answers, 2)
                key = "-".join(sorted(str(a) for a in answers))
                comparisons.append((owner, prompt, chosen, rejected, rng.random() < 0.05, key, at, at))
        if len(feedback) >= 50_000:
            flush()
    flush()
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('feedback_messagestep', 'id'), %s)", [max(step_id, 1)])
        cursor.execute("ANALYZE")
    return counts


def child(args: argparse.Namespace) -> None:
    """One build, in this (fresh) process; prints its figures as JSON."""
    setup_django(args.db_url)
    from training.processor import ProcessorOptions, snapshot_build

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory(prefix="bench-datasets-") as root:
        started = time.monotonic()
        snapshot = snapshot_build(options=ProcessorOptions(chunk_size=args.chunk_size), root=Path(root))
        seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = {
        "seconds": seconds,
        "peak_mb": peak / 1024,
        "baseline_mb": baseline / 1024,
        "source": snapshot.source,
        "row_counts": snapshot.row_counts,
        "size_mb": snapshot.size_bytes / 2**20,
    }
    print("RESULT " + json.dumps(figures))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append", help="feedback rows to seed (repeatable; 100000)")
    parser.add_argument("--repeat", type=int, default=3, help="builds per size; medians are reported (3)")
    parser.add_argument(
        "--db", default="rlhf_bench_dataset", help="database (created if missing; its feedback emptied)"
    )
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--chunk-size", type=int, default=2000, help="conversations per batch (2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "bench" not in args.db:
        parser.error("--db must contain 'bench' (its feedback tables are emptied)")
    args.db_url = f"{args.pg.rstrip('/')}/{args.db}"
    if args.child:
        child(args)
        return 0

    ensure_database(args.pg, args.db)
    setup_django(args.db_url)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    summary = []
    for rows in args.rows or [100_000]:
        started = time.monotonic()
        counts = seed(rows, random.Random(args.seed))
        print(f"seeded {counts} in {time.monotonic() - started:.1f} s", flush=True)
        runs = []
        for _ in range(args.repeat):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--db",
                args.db,
                "--pg",
                args.pg,
                "--chunk-size",
                str(args.chunk_size),
            ]
            out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
            result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            runs.append(result)
            read = sum(result["source"][k] for k in ("feedback_rows", "comparison_rows", "messages", "steps"))
            per_second = result["source"]["feedback_rows"] / result["seconds"]
            print(
                f"  {rows:>9} rows: {result['seconds']:6.1f} s, {per_second:9.0f} feedback rows/s"
                f" ({read / result['seconds']:9.0f} rows read/s), peak RSS {result['peak_mb']:.0f} MB"
                f" (baseline {result['baseline_mb']:.0f} MB), {result['size_mb']:.0f} MB written",
                flush=True,
            )
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = statistics.median(r["peak_mb"] for r in runs)
        summary.append((rows, seconds, peak, runs[-1]))
    print("\nmedians:")
    for _, seconds, peak, last in summary:
        feedback_rows = last["source"]["feedback_rows"]
        print(
            f"  {feedback_rows:>9} feedback rows: {seconds:6.1f} s, {feedback_rows / seconds:9.0f} rows/s,"
            f" peak {peak:.0f} MB; rows {json.dumps(last['row_counts'])}"
        )
        if feedback_rows >= 1_000_000:
            ok = seconds <= GOAL_SECONDS * feedback_rows / 1_000_000 and peak <= GOAL_MB
            print(f"  goal (1M rows in <= {GOAL_SECONDS:.0f} s, <= {GOAL_MB:.0f} MB): {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
