"""Benchmark of the per-version analytics and the monitor's reads on a million feedback rows (PostgreSQL).

    .venv/bin/python bench/analytics.py [--rows 1000000] [--repeat 5] [--explain]

Seeds (once; ``--reseed`` to start again) the database ``--db`` (default ``rlhf_bench_analytics``) with
COPY: five policy versions live one after the other over 60 days, the last serving 60% of the answers;
one feedback row per answer from 2,000 users (thumbs, stars or both), step feedback on 10% of the
answers, and side-by-side votes between versions on 5% of them. Then times, medians of ``--repeat``:

- ``version_analytics`` of the biggest version (its whole life) and of a 7-day window: what the
  version's admin page and the registry API's detail compute;
- ``rating_counts`` (per-user cap) and ``vote_counts`` for the same version: one monitor pass;
- ``insights`` for the last 30 days (all versions, and the biggest one): the feedback insights page
  and ``/api/assistant/insights`` (satisfaction per day, reasons, steps, topics, comments), and its
  topics table alone (TF-IDF and k-means on the newest ``INSIGHTS_TOPIC_SAMPLE`` rated prompts).

``--explain`` prints PostgreSQL's plan of the main queries (the index plan). Goal: each under 2 s on
a million feedback rows (a page an operator waits for).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ensure_database, setup_django

GOAL_SECONDS = 2.0
USERS = 2000
VERSIONS = 5
SUBJECTS = ["python", "postgres", "sourdough", "tax return", "garden", "resume", "bicycle", "budget"]
ASKS = ["How do I fix my {} problem?", "Explain {} basics step by step", "What is the best {} setup?"]
REASONS = ["wrong", "too long", "unclear", "unsafe"]


def seeded_rows() -> int:
    from feedback.models import Feedback

    return Feedback.objects.count()


def seed(rows: int, rng: random.Random) -> list[int]:
    """COPY in ``rows`` answers each rated once, plus step feedback and votes; returns the versions' ids."""
    from django.contrib.auth.models import User
    from django.db import connection

    from models_registry.models import ModelVersion

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE feedback_comparison, feedback_feedback, feedback_messagestep, feedback_message,"
            " feedback_conversation, training_monitordecision RESTART IDENTITY CASCADE"
        )
    ModelVersion.objects.all().delete()
    users = [User.objects.get_or_create(username=f"bench-user-{i:04d}")[0].pk for i in range(USERS)]
    start = datetime.now(UTC) - timedelta(days=60)
    versions = [
        ModelVersion.objects.create(kind="policy", number=n + 1, artifact_path=f"bench/v{n + 1}", status="retired")
        for n in range(VERSIONS)
    ]
    ModelVersion.objects.filter(pk=versions[-1].pk).update(status="live")
    # The last version serves 60% of the answers; the others share the rest, one after the other.
    shares = [0.1] * (VERSIONS - 1) + [0.6]
    bounds = [sum(shares[: i + 1]) for i in range(VERSIONS)]
    conversations: list[tuple[Any, ...]] = []
    messages: list[tuple[Any, ...]] = []
    steps: list[tuple[Any, ...]] = []
    feedback: list[tuple[Any, ...]] = []
    votes: list[tuple[Any, ...]] = []
    step_id = 0

    def flush() -> None:
        with connection.cursor() as cursor:
            raw = cursor.cursor
            for table, columns, data in (
                ("feedback_conversation", "id, user_id, title, created_at", conversations),
                (
                    "feedback_message",
                    "id, conversation_id, role, content, parent_id, model_version_id, status, error, token_count,"
                    " time_to_first_token_ms, created_at",
                    messages,
                ),
                ("feedback_messagestep", "id, message_id, index, content", steps),
                (
                    "feedback_feedback",
                    "user_id, message_id, model_version_id, step_id, thumbs, rating, comment, tags, created_at,"
                    " updated_at",
                    feedback,
                ),
                (
                    "feedback_comparison",
                    "user_id, prompt_id, chosen_id, rejected_id, chosen_version_id, rejected_version_id, is_tie,"
                    " pair_key, created_at, updated_at",
                    votes,
                ),
            ):
                with raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in data:
                        copy.write_row(row)
                data.clear()

    per_conversation = 10
    for i in range(0, rows, per_conversation):
        user = rng.choice(users)
        conversation = uuid.uuid4()
        fraction = i / rows
        version_index = next(k for k, bound in enumerate(bounds) if fraction < bound)
        version = versions[version_index]
        at = start + timedelta(days=60 * fraction)
        conversations.append((conversation, user, "bench", at))
        for j in range(min(per_conversation, rows - i)):
            prompt, answer = uuid.uuid4(), uuid.uuid4()
            when = at + timedelta(seconds=j)
            status = "complete" if rng.random() > 0.03 else rng.choice(["stopped", "failed"])
            question = rng.choice(ASKS).format(rng.choice(SUBJECTS))
            messages.append((prompt, conversation, "user", question, None, None, "complete", "", None, None, when))
            tokens = rng.randint(20, 200)
            messages.append(
                (answer, conversation, "assistant", "1. a\n2. b", prompt, version.pk, status, "", tokens,
                 rng.randint(20, 400), when)
            )  # fmt: skip
            good = rng.random() < 0.55 + 0.03 * version_index
            kind = rng.random()
            thumbs = None if kind < 0.3 else ("up" if good else "down")
            rating = None if kind >= 0.6 else (rng.randint(4, 5) if good else rng.randint(1, 3))
            rated_at = when + timedelta(minutes=2)
            reasons, comment = "[]", ""
            if not good and rng.random() < 0.3:
                reasons = json.dumps(rng.sample(REASONS, rng.randint(1, 2)))
                comment = "It missed the point." if rng.random() < 0.2 else ""
            feedback.append((user, answer, version.pk, None, thumbs, rating, comment, reasons, rated_at, rated_at))
            if rng.random() < 0.1:
                step_id += 1
                steps.append((step_id, answer, 0, "1. a"))
                step_rating = (user, answer, version.pk, step_id, rng.choice(["up", "down"]), None, "", "[]")
                feedback.append((*step_rating, rated_at, rated_at))
            if version_index > 0 and rng.random() < 0.05:
                other = uuid.uuid4()
                rival = versions[version_index - 1].pk
                messages.append((other, conversation, "assistant", "1. c", prompt, rival, "complete", "", 10, 50, when))
                sides = [(answer, version.pk), (other, rival)]
                (chosen, chosen_v), (rejected, rejected_v) = sides if rng.random() < 0.55 else sides[::-1]
                key = "-".join(sorted([str(answer), str(other)]))
                tie = rng.random() < 0.05
                votes.append((user, prompt, chosen, rejected, chosen_v, rejected_v, tie, key, when, when))
        if len(messages) >= 100_000:
            flush()
    flush()
    with connection.cursor() as cursor:
        cursor.execute("SELECT setval(pg_get_serial_sequence('feedback_messagestep', 'id'), %s)", [max(step_id, 1)])
        cursor.execute("ANALYZE")
    return [v.pk for v in versions]


def timed(call: Any, repeat: int) -> tuple[float, Any]:
    seconds = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def explain(call: Any, name: str) -> None:
    """PostgreSQL's plan of every query ``call`` runs (EXPLAIN ANALYZE of the SQL it sent)."""
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    reset_queries()
    with CaptureQueriesContext(connection) as captured:
        call()
    for query in captured.captured_queries:
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {query['sql']}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
        print(f"\n-- {name}: {query['sql'][:160]}...\n{plan}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="answers, each rated once")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", default="rlhf_bench_analytics")
    parser.add_argument("--pg", default=os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432"))
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args()

    ensure_database(args.pg, args.db)
    setup_django(f"{args.pg.rstrip('/')}/{args.db}")
    from django.core.management import call_command
    from django.utils import timezone

    from feedback import analytics, insights
    from models_registry.models import ModelVersion

    call_command("migrate", verbosity=0)
    if args.reseed or seeded_rows() < args.rows:
        started = time.monotonic()
        seed(args.rows, random.Random(args.seed))
        print(f"seeded {seeded_rows():,} feedback rows in {time.monotonic() - started:.0f} s")
    else:
        print(f"using the {seeded_rows():,} feedback rows already seeded (--reseed to start again)")
    version = ModelVersion.objects.filter(kind="policy").order_by("-number").first()
    assert version is not None
    week = timezone.now() - timedelta(days=7)
    checks = [
        ("version_analytics, whole life", lambda: analytics.version_analytics(version)),
        ("version_analytics, last 7 days", lambda: analytics.version_analytics(version, since=week)),
        ("rating_counts (monitor), whole life", lambda: analytics.rating_counts(version.pk, per_user=20)),
        ("rating_counts (monitor), last 7 days", lambda: analytics.rating_counts(version.pk, since=week, per_user=20)),
        ("vote_counts (monitor)", lambda: analytics.vote_counts(version.pk, version.pk - 1, per_user=20)),
        ("insights, last 30 days", lambda: insights.insights(insights.Filters.last_days(30))),
        ("insights, last 30 days, one version", lambda: insights.insights(insights.Filters.last_days(30, version.pk))),
        ("insights topics alone, last 30 days", lambda: insights.topics(insights.Filters.last_days(30))),
    ]
    print(f"\n{version.label}: medians of {args.repeat}")
    worst = 0.0
    for name, call in checks:
        seconds, result = timed(call, args.repeat)
        worst = max(worst, seconds)
        if isinstance(result, analytics.VersionAnalytics):
            summary = f"{result.total.served:,} answers, {result.total.positive.n:,} ratings"
        elif isinstance(result, dict):
            days = len({row["day"] for row in result["satisfaction"]})
            summary = f"{days} days, {len(result['tags'])} reasons, {len(result['topics'])} topics"
        elif isinstance(result, list):
            summary = f"{len(result)} topics, unhappiest: {' '.join(result[0]['terms'][:3]) if result else '-'}"
        else:
            summary = str(result)
        print(f"  {name:40} {seconds * 1000:8.0f} ms   ({summary})")
    print(f"\ngoal (each under {GOAL_SECONDS:.0f} s): {'met' if worst <= GOAL_SECONDS else 'NOT met'}")
    if args.explain:
        explain(checks[0][1], checks[0][0])
        explain(checks[2][1], checks[2][0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
