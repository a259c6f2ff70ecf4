"""What one ``POST /api/assistant/feedback`` does to the database, and what it costs in-process.

Run by hand after ``bench/feedback_load.py`` (it reuses the ``rlhf_bench`` database it leaves)::

    .venv/bin/python bench/query_count.py [--requests 300] [--rtt-ms 2]

Prints the SQL of one feedback request (Django's CaptureQueriesContext) and every statement libpq
sent for it (a libpq trace, which also shows BEGIN, COMMIT and the connection health check that
Django runs outside its query log), then the mean wall and CPU time of a feedback request and of a
``bench/floor`` request through Django's test client (same process, no HTTP server).

``--rtt-ms``: reach PostgreSQL through a proxy that holds each packet for half that long each way,
as a database a network trip away would (a hosted one such as Supabase: a few milliseconds); the
wall time per request then shows what each round trip costs.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def delaying_proxy(rtt: float) -> int:
    """The port of a ``tests.faults.TcpProxy`` to PostgreSQL holding each chunk ``rtt / 2`` seconds
    each way, run in a child process of its own so that it does not wait for this one's GIL."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            sys.path.insert(0, str(ROOT))
            from tests.faults import TcpProxy

            os.write(write_end, str(TcpProxy("127.0.0.1", 5432, delay=rtt / 2).port).encode())
            signal.pause()
        finally:
            os._exit(0)
    atexit.register(os.kill, pid, signal.SIGTERM)
    return int(os.read(read_end, 16))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="rlhf_bench")
    parser.add_argument("--requests", type=int, default=300, help="requests timed per endpoint")
    parser.add_argument("--settings", default="bench.floor_settings")
    parser.add_argument("--profile", type=int, default=0, help="also cProfile the feedback requests; show N lines")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="a round trip to PostgreSQL, ms (a proxy)")
    args = parser.parse_args()
    port = 5432
    if args.rtt_ms:
        port = delaying_proxy(args.rtt_ms / 1000)
        print(f"PostgreSQL through a proxy adding {args.rtt_ms} ms per round trip")

    os.environ.update(
        DJANGO_SETTINGS_MODULE=args.settings,
        DEBUG="0",
        SECRET_KEY="bench-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        API_THROTTLE_RATE="off",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{port}/{args.db}",
        LOG_LEVEL="WARNING",
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from rest_framework.authtoken.models import Token

    from feedback.models import Message

    token = Token.objects.select_related("user").order_by("user_id").first()
    if token is None:
        print("no bench data: run bench/feedback_load.py first", file=sys.stderr)
        return 2
    fresh = list(
        Message.objects.filter(conversation__user=token.user, role=Message.Role.ASSISTANT)
        .exclude(feedback__user=token.user)
        .values_list("id", flat=True)[: args.requests + 10]
    )
    if len(fresh) < args.requests + 2:
        print(f"only {len(fresh)} unrated messages left for {token.user}; lower --requests", file=sys.stderr)
        return 2
    client = Client(headers={"authorization": f"Token {token.key}"})

    def post_feedback(message_id: object) -> int:
        body = {"message_id": str(message_id), "thumbs": "up", "rating": 4}
        return client.post("/api/assistant/feedback", body, content_type="application/json").status_code

    def post_floor(message_id: object) -> int:
        body = {"message_id": str(message_id), "thumbs": "up", "rating": 4}
        return client.post("/bench/floor", body, content_type="application/json").status_code

    # Warm up (imports, URL resolver, the connection); the second request is a steady-state one.
    assert post_feedback(fresh.pop()) == 201
    assert post_floor(fresh[0]) == 201

    timings: list[float] = []

    def timed(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            timings.append(time.perf_counter() - t0)

    connection.ensure_connection()
    with (
        tempfile.TemporaryFile("w+") as trace,
        CaptureQueriesContext(connection) as queries,
        connection.execute_wrapper(timed),
    ):
        connection.connection.pgconn.trace(trace.fileno())
        t0 = time.perf_counter()
        status = post_feedback(fresh.pop())
        total = time.perf_counter() - t0
        connection.connection.pgconn.untrace()
        trace.seek(0)
        sent = []
        for line in trace:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 5 and parts[1] == "F" and parts[3] in ("Query", "Parse"):
                sent.append(parts[4].strip().strip('"'))
    # BEGIN/COMMIT appear in Django's log but do not pass through execute_wrapper.
    wrapped = iter(timings)
    print(f"one feedback request (HTTP {status}, {total * 1000:.2f} ms in-process):")
    print(f"  {len(queries)} statements in Django's query log (CaptureQueriesContext):")
    for i, q in enumerate(queries.captured_queries, 1):
        took = "" if q["sql"] in ("BEGIN", "COMMIT") else f"[{next(wrapped, 0) * 1000:.2f} ms] "
        print(f"    {i}. {took}{q['sql'][:150]}{'...' if len(q['sql']) > 150 else ''}")
    print(f"  {len(sent)} statements sent by libpq (each one a round trip to PostgreSQL):")
    for i, sql in enumerate(sent, 1):
        print(f"    {i}. {sql[:110]}{'...' if len(sql) > 110 else ''}")

    for name, call in (("feedback", post_feedback), ("floor", post_floor)):
        if name == "feedback":
            ids = [fresh.pop() for _ in range(args.requests)]  # the floor reuses them: it only stores the body
        wall0, cpu0 = time.perf_counter(), time.process_time()
        statuses = [call(i) for i in ids]
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        if name == "feedback" and args.profile:
            import cProfile
            import pstats

            more = [fresh.pop() for _ in range(min(args.requests, len(fresh)))]
            with cProfile.Profile() as profile:
                for message_id in more:
                    call(message_id)
            pstats.Stats(profile).sort_stats("cumulative").print_stats(args.profile)
        bad = [s for s in statuses if s != 201]
        print(
            f"{name:<9} {args.requests} requests in-process: {wall / args.requests * 1000:.2f} ms wall, "
            f"{cpu / args.requests * 1000:.2f} ms CPU (this process) per request"
            + (f"; {len(bad)} non-201!" if bad else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
