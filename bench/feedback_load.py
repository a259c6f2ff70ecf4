"""Load benchmark of ``POST /api/assistant/feedback`` against a one-INSERT floor, under uvicorn.

Run by hand (not a test)::

    .venv/bin/python bench/feedback_load.py [--clients 64] [--duration 15] [--workers 2]

What it does:

1. Drops and recreates the PostgreSQL database ``rlhf_bench``, migrates it, creates one user (with
   a DRF token) per client and enough assistant messages that every request of the run targets a
   distinct (user, message) pair, so each request creates exactly one Feedback row. It also creates
   the table ``bench_floor`` that the floor endpoint writes to.
2. For each target (``feedback``, then ``floor``) starts uvicorn as deployed
   (``rlhf_site.asgi:application``, uvloop, httptools, no access log, DEBUG=0, throttling off unless
   ``--throttle``) with ``DJANGO_SETTINGS_MODULE=bench.floor_settings`` -- the project's settings and URLs plus
   ``bench/floor`` -- so both runs differ only in the endpoint; warms it up, then drives it with wrk
   (``bench/feedback_load.lua``) for ``--duration`` seconds and stops it.
3. Counts the rows written, and prints requests/s, p50/p99 latency, errors, requests completed and
   rows written per target, the CPU time per request (server, PostgreSQL, wrk, rest of the
   machine), the feedback/floor throughput ratio and whether the goals are met.

Needs ``wrk`` (``apt-get install -y wrk``). Settings environment variables other than the ones set
here pass through to the server (e.g. ``DATABASE_POOL=0``), which is how to try a variation;
``--settings``, ``--app`` and ``--uvicorn-args`` try others, ``--py-spy DIR`` samples a worker
(py-spy is in requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from common import cpu_seconds_by_group  # bench/ is this script's folder, so first on sys.path

ROOT = Path(__file__).resolve().parent.parent
LUA_SCRIPT = ROOT / "bench" / "feedback_load.lua"
TARGETS = {"feedback": "/api/assistant/feedback", "floor": "/bench/floor"}
FLOOR_TABLE = "bench_floor"

# Issue 13's goals: near the one-INSERT floor of the same server, on its CPU, and a bounded p99.
GOAL_P99_MS = 250.0
GOAL_FLOOR_RATIO = 0.6
GOAL_CPU_RATIO = 2.0  # server CPU per feedback request at most this times the floor's


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections; one user each (64)")
    parser.add_argument("--duration", type=int, default=15, help="seconds of measured load per target (15)")
    parser.add_argument(
        "--workers",
        default="2",
        help="uvicorn worker processes; a comma list (e.g. 1,2,3,4) runs every target for each (2)",
    )
    parser.add_argument("--targets", default="feedback,floor", help="comma list of: feedback, floor")
    parser.add_argument(
        "--throttle", default="off", help="API_THROTTLE_RATE of the server (off; the product's default is 600/min)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per (workers, target); the table shows medians")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load before each run (3)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1: leaves the CPUs to the server)")
    parser.add_argument("--timeout", type=int, default=5, help="wrk's per-request timeout in seconds (5)")
    parser.add_argument(
        "--max-rps", type=int, default=3000, help="throughput the test data is sized for (messages per user)"
    )
    parser.add_argument("--db", default="rlhf_bench", help="database to DROP and recreate (must contain 'bench')")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--settings", default="bench.floor_settings", help="DJANGO_SETTINGS_MODULE of the server")
    parser.add_argument("--app", default="rlhf_site.asgi:application", help="what uvicorn serves")
    parser.add_argument("--uvicorn-args", default="", help="extra uvicorn options, e.g. '--interface wsgi'")
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    parser.add_argument("--json", type=Path, help="also write every run's raw numbers to this file")
    parser.add_argument(
        "--py-spy", type=Path, help="sample one worker with py-spy during each measured run; raw stacks go here"
    )
    parser.add_argument("--py-spy-args", default="", help="extra py-spy record options, e.g. '--gil' or '--idle'")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server logs and the wrk data file")
    args = parser.parse_args()
    args.worker_counts = [int(w) for w in str(args.workers).split(",") if w.strip()]
    args.target_names = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.target_names if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; choose from {sorted(TARGETS)}")
    if "bench" not in args.db:
        parser.error("--db must contain 'bench' (it is dropped and recreated)")
    if args.clients < args.wrk_threads:
        parser.error("--clients must be at least --wrk-threads")
    if args.port == 0:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            args.port = sock.getsockname()[1]
    return args


def server_environment(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE=args.settings,
        DEBUG="0",
        SECRET_KEY="bench-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        API_THROTTLE_RATE=args.throttle,
        DATABASE_URL=f"{args.pg.rstrip('/')}/{args.db}",
        REDIS_URL=args.redis,
        PYTHONUNBUFFERED="1",
    )
    return env


# --- Database set-up -----------------------------------------------------------------------------


def recreate_database(args: argparse.Namespace) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{args.pg.rstrip('/')}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.db)))


def populate(users: int, per_user: int, data_file: Path) -> None:
    """Users with tokens, each with one conversation: a prompt and ``per_user`` answers to it."""
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.db import connection, transaction
    from rest_framework.authtoken.models import Token

    from feedback.models import Conversation, Message

    unusable = make_password(None)
    with transaction.atomic():
        people = User.objects.bulk_create([User(username=f"bench{i:04d}", password=unusable) for i in range(users)])
        tokens = Token.objects.bulk_create([Token(key=Token.generate_key(), user=u) for u in people])
        conversations = Conversation.objects.bulk_create(
            [Conversation(user=u, title=f"Bench conversation {i}") for i, u in enumerate(people)]
        )
        prompts = Message.objects.bulk_create(
            [Message(conversation=c, role=Message.Role.USER, content="How do I boil an egg?") for c in conversations]
        )
        answer_ids: list[list[str]] = []
        for conversation, prompt in zip(conversations, prompts, strict=True):
            answers = [
                Message(
                    conversation=conversation,
                    role=Message.Role.ASSISTANT,
                    parent=prompt,
                    content="1. Boil water.\n2. Add the egg.\n3. Wait nine minutes.",
                    status=Message.Status.COMPLETE,
                )
                for _ in range(per_user)
            ]
            Message.objects.bulk_create(answers, batch_size=5000)
            answer_ids.append([str(a.id) for a in answers])
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TABLE {FLOOR_TABLE} "
                "(id bigserial PRIMARY KEY, body jsonb, created_at timestamptz DEFAULT now())"
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    with data_file.open("w") as out:
        for token, ids in zip(tokens, answer_ids, strict=True):
            out.write(f"{token.key} {' '.join(ids)}\n")


def count_rows(target: str) -> int:
    from django.db import connection

    table = "feedback_feedback" if target == "feedback" else FLOOR_TABLE
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return int(cursor.fetchone()[0])


def settled_count(target: str, limit: float) -> int:
    """The row count once it has stopped changing for half a second (at most ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    count = count_rows(target)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        previous, count = count, count_rows(target)
        if count == previous:
            break
    return count


# --- The server ----------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    """A process's command line ('' once it is gone). uvicorn's children with several workers include
    multiprocessing's resource tracker, which serves nothing (a profile of it is empty)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Server:
    """uvicorn in its own process group, so stopping it stops its workers too."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], workers: int, log_path: Path) -> None:
        self.args, self.env, self.workers, self.log_path = args, env, workers, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "uvicorn", self.args.app,
            "--host", "127.0.0.1", "--port", str(self.args.port), "--workers", str(self.workers),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "info",
            *self.args.uvicorn_args.split(),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60 + 10 * self.workers
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.proc.returncode}; see {self.log_path}")
            started = self.log_path.read_text(errors="replace").count("Started server process")
            if started >= self.workers and self._answers():
                return
            time.sleep(0.2)
        raise RuntimeError(f"uvicorn did not start in time; see {self.log_path}")

    def _answers(self) -> bool:
        url = f"http://127.0.0.1:{self.args.port}/api/assistant/satisfaction"
        try:
            urllib.request.urlopen(url, timeout=5)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except OSError:
            return False
        return False

    def stop(self) -> None:
        """SIGTERM (uvicorn finishes the requests in flight), then SIGKILL after 20 s."""
        if self.proc is None or (self.proc.poll() is not None and not self._group_alive()):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (self.proc.poll() is None or self._group_alive()):
            time.sleep(0.1)
        if self.proc.poll() is None or self._group_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def worker_pids(self) -> list[int]:
        """The processes serving requests: uvicorn's children, or uvicorn itself with one worker."""
        assert self.proc is not None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            children = []
        workers = [int(pid) for pid in children if "resource_tracker" not in _cmdline(int(pid))]
        return workers or [self.proc.pid]

    def _group_alive(self) -> bool:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True


def start_profiler(args: argparse.Namespace, server: Server, label: str) -> subprocess.Popen[bytes] | None:
    """With --py-spy DIR: sample one worker for the measured run (py-spy's raw collapsed stacks)."""
    if args.py_spy is None:
        return None
    binary = os.environ.get("PY_SPY") or shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.py_spy.mkdir(parents=True, exist_ok=True)
    pid = server.worker_pids()[0]
    out = args.py_spy / f"{label}-{int(time.time())}.txt"
    cmd = [binary, "record", "-p", str(pid), "-d", str(args.duration), "-r", "100", "--nonblocking"]
    cmd += ["-f", "raw", "-o", str(out)]
    with out.with_suffix(".log").open("wb") as log:  # py-spy's own messages: why a profile is empty
        return subprocess.Popen([*cmd, *args.py_spy_args.split()], stdout=log, stderr=subprocess.STDOUT)


def cpu_snapshot(server: Server) -> dict[str, float]:
    """CPU seconds so far: the server's processes, PostgreSQL's, wrk's and the whole machine's busy time."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once this process has reaped it
    groups = cpu_seconds_by_group({"server": server.proc.pid if server.proc is not None else -1})
    groups["wrk"] = children.ru_utime + children.ru_stime
    cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    idle = int(cpu[3]) + int(cpu[4])  # idle + iowait
    groups["total"] = (sum(int(v) for v in cpu[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    return groups


# --- Load ---------------------------------------------------------------------------------------


def run_wrk(args: argparse.Namespace, path: str, data_file: Path, start: int, seconds: int) -> dict[str, Any]:
    cmd = [
        "wrk", "-t", str(args.wrk_threads), "-c", str(args.clients), "-d", f"{seconds}s",
        "--timeout", f"{args.timeout}s", "--latency", "-s", str(LUA_SCRIPT), f"http://127.0.0.1:{args.port}",
        "--", str(data_file), path, str(args.wrk_threads), str(start),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            # wrk calls request() once on thread 0 to check the script, and never sends that one.
            result["sent"] -= 1
            result["wrk_output"] = proc.stdout
            return result
    raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def measure(
    args: argparse.Namespace, env: dict[str, str], workers: int, target: str, data_file: Path, cursor: dict[str, int]
) -> dict[str, Any]:
    """One run: start a server, warm it up, load it, stop it, count rows. ``cursor['next']`` is the
    first unused message index of every user (feedback runs consume messages)."""
    path = TARGETS[target]
    log_path = Path(env["BENCH_LOG_DIR"]) / f"uvicorn-{target}-w{workers}-{int(time.time() * 1000)}.log"
    server = Server(args, env, workers, log_path)
    start = cursor["next"] if target == "feedback" else 1  # the floor ignores the ids
    profiler: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        if args.warmup > 0:
            warm = run_wrk(args, path, data_file, start, args.warmup)
            if target == "feedback":
                start = cursor["next"] = start + warm["max_used"]
        rows_before = settled_count(target, args.timeout + 5)  # the warm-up's last requests finish first
        profiler = start_profiler(args, server, f"{target}-w{workers}")
        cpu_before = cpu_snapshot(server)
        result = run_wrk(args, path, data_file, start, args.duration)
        cpu_after = cpu_snapshot(server)
        if profiler is not None:
            profiler.wait(timeout=60)
        if target == "feedback":
            cursor["next"] += result["max_used"]
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
            profiler.wait()
        server.stop()  # graceful: requests in flight when wrk stopped are finished (and committed)
    result["rows"] = count_rows(target) - rows_before
    errors = result["errors"]
    result.update(
        target=target,
        workers=workers,
        rps=result["completed"] / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        non_2xx=errors["status"],
        in_flight=result["sent"] - result["completed"],
        log=str(log_path),
    )
    # CPU time spent during the measured run, per completed request.
    per_request = 1000 / max(result["completed"], 1)
    result["cpu_ms"] = {k: (cpu_after[k] - cpu_before[k]) * per_request for k in cpu_after}
    result["cpu_busy"] = (cpu_after["total"] - cpu_before["total"]) / (result["duration_us"] / 1e6) / os.cpu_count()
    result["created"] = result["statuses"].get("201", 0)
    result["unexpected_statuses"] = {k: v for k, v in result["statuses"].items() if k != "201"}
    # Every 201 is one new row; a request still in flight when wrk stopped (it does not count those)
    # may have written one more each.
    problems = []
    if result["unexpected_statuses"]:
        problems.append("non-201: " + ",".join(f"{v}x{k}" for k, v in sorted(result["unexpected_statuses"].items())))
    if result["wrapped"] and target == "feedback":
        problems.append(f"{result['wrapped']} reused ids")
    if not result["created"] <= result["rows"] <= result["created"] + result["in_flight"]:
        problems.append("rows outside [201s, 201s + in flight]")
    result["rows_problems"] = problems
    result["rows_ok"] = not problems
    return result


# --- Report -------------------------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    return {
        "target": runs[0]["target"],
        "workers": runs[0]["workers"],
        "runs": len(runs),
        "rps": med("rps"),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "errors": sum(r["socket_errors"] + r["non_2xx"] for r in runs),
        "completed": med("completed"),
        "created": med("created"),
        "in_flight": med("in_flight"),
        "rows": med("rows"),
        "rows_ok": all(r["rows_ok"] for r in runs),
        "rows_problems": sorted({p.split(":")[0] for r in runs for p in r["rows_problems"]}),
        "cpu_busy": med("cpu_busy"),
        "cpu_ms": {k: statistics.median(r["cpu_ms"][k] for r in runs) for k in runs[0]["cpu_ms"]},
    }


def print_report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    header = (
        f"{'workers':>7} {'target':<9} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'completed':>9} {'201s':>7} {'in flight':>9} {'rows':>7}  rows check"
    )
    median_note = f" (medians of {args.repeat} runs; errors summed)" if args.repeat > 1 else ""
    print(
        f"\n== {args.clients} clients, {args.duration} s per run, wrk -t{args.wrk_threads}, "
        f"settings {args.settings}{median_note}"
    )
    print(header)
    print("-" * len(header))
    summaries: dict[tuple[int, str], dict[str, Any]] = {}
    for workers in args.worker_counts:
        for target in args.target_names:
            group = [r for r in runs if r["workers"] == workers and r["target"] == target]
            if not group:
                continue
            s = summaries[workers, target] = summarise(group)
            print(
                f"{workers:>7} {target:<9} {s['rps']:>7.0f} {s['p50_ms']:>7.1f} {s['p99_ms']:>7.1f} "
                f"{s['errors']:>6} {s['completed']:>9.0f} {s['created']:>7.0f} {s['in_flight']:>9.0f} "
                f"{s['rows']:>7.0f}  {'ok' if s['rows_ok'] else 'NO (' + '; '.join(s['rows_problems']) + ')'}"
            )
    print(
        "req/s = completed responses / s (wrk's count, any status); errors = non-2xx + socket errors;\n"
        "in flight = requests sent but not completed when wrk stopped: the server finishes them, so\n"
        "rows check ok = only 201s, no message reused, and 201s <= rows <= 201s + in flight."
    )
    print(
        f"\nCPU per completed request, ms (machine: {os.cpu_count()} CPUs): "
        "server = uvicorn processes, postgres = all its processes, other = the rest of the machine"
    )
    print(
        f"{'workers':>7} {'target':<9} {'busy':>5} {'server':>7} {'postgres':>8} {'wrk':>6} {'other':>6} {'total':>6}"
    )
    for (workers, target), s in summaries.items():
        c = s["cpu_ms"]
        other = c["total"] - c["server"] - c["postgres"] - c["wrk"]
        print(
            f"{workers:>7} {target:<9} {s['cpu_busy']:>5.0%} {c['server']:>7.2f} {c['postgres']:>8.2f} "
            f"{c['wrk']:>6.2f} {other:>6.2f} {c['total']:>6.2f}"
        )
    for run in runs:
        if run["rows_problems"]:
            print(f"  ! {run['target']} w{run['workers']}: {'; '.join(run['rows_problems'])}; server log {run['log']}")
    for workers in args.worker_counts:
        fb, fl = summaries.get((workers, "feedback")), summaries.get((workers, "floor"))
        if fb is None:
            continue
        ratio = fb["rps"] / fl["rps"] if fl else math.nan
        goals = [
            (f"p99 < {GOAL_P99_MS:.0f} ms", fb["p99_ms"] < GOAL_P99_MS, f"{fb['p99_ms']:.1f} ms"),
            ("no errors", fb["errors"] == 0, str(fb["errors"])),
            ("rows == requests (one new row per request)", fb["rows_ok"], f"{fb['rows']:.0f} rows"),
        ]
        if fl:
            goals.append((f">= {GOAL_FLOOR_RATIO}x floor throughput", ratio >= GOAL_FLOOR_RATIO, f"{ratio:.2f}x"))
            cpu = fb["cpu_ms"]["server"] / fl["cpu_ms"]["server"]
            goals.append((f"server CPU <= {GOAL_CPU_RATIO}x the floor's", cpu <= GOAL_CPU_RATIO, f"{cpu:.2f}x"))
        met = all(ok for _, ok, _ in goals)
        print(f"\nworkers={workers}: feedback/floor throughput = {ratio:.2f}x; goals {'MET' if met else 'NOT MET'}")
        for name, ok, value in goals:
            print(f"  [{'x' if ok else ' '}] {name}: {value}")


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed. Install it with:\n    apt-get update && apt-get install -y wrk\n"
            "(or build it from https://github.com/wg/wrk) and run this again.",
            file=sys.stderr,
        )
        return 2

    env = server_environment(args)
    workdir = Path(tempfile.mkdtemp(prefix="feedback_load-"))
    env["BENCH_LOG_DIR"] = str(workdir)
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.floor_settings"  # this process only sets up and counts
    sys.path.insert(0, str(ROOT))

    feedback_runs = args.repeat * len(args.worker_counts) * ("feedback" in args.target_names)
    per_user = math.ceil(args.max_rps * (args.duration + args.warmup) * max(feedback_runs, 1) / args.clients * 1.2)
    t0 = time.monotonic()
    print(f"setting up database {args.db}: {args.clients} users x {per_user} assistant messages ...", flush=True)
    recreate_database(args)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    data_file = workdir / "users.txt"
    populate(args.clients, per_user, data_file)
    print(f"  ready in {time.monotonic() - t0:.1f} s; logs and data in {workdir}", flush=True)

    runs: list[dict[str, Any]] = []
    cursor = {"next": 1}
    interrupted = False
    try:
        for rep in range(args.repeat):
            for workers in args.worker_counts:
                for target in args.target_names:
                    print(f"run {rep + 1}/{args.repeat}: {target:<8} workers={workers} ...", end=" ", flush=True)
                    run = measure(args, env, workers, target, data_file, cursor)
                    runs.append(run)
                    print(
                        f"{run['rps']:.0f} req/s, p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, "
                        f"errors {run['socket_errors'] + run['non_2xx']}, completed {run['completed']}, "
                        f"rows {run['rows']}",
                        flush=True,
                    )
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; servers stopped", file=sys.stderr)
    if runs:
        print_report(args, runs)
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "wrk_output"} for r in runs], indent=2))
    problems = any(not r["rows_ok"] for r in runs)
    if args.keep_logs or interrupted or problems:
        print(f"server logs and the wrk data file kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ntotal {time.monotonic() - t0:.0f} s")
    return 130 if interrupted else 0


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
