"""Benchmark of the chat WebSocket (``/ws/chat/<conversation>/``) under uvicorn.

Run by hand (not a test)::

    .venv/bin/python bench/chat_load.py [--part ratio|load|first|all] [--clients 50,200] [--workers 1]

1. Drops and recreates the PostgreSQL database ``rlhf_chat_bench``, migrates it, and creates users,
   one conversation each and a Django session per user (the WebSocket clients send its cookie).
   The server is ``bin/web`` (uvicorn serving ``rlhf_site.asgi:application`` as ``bin/run`` starts it;
   permessage-deflate off unless ``--ws-compression``) with DEBUG=0, Redis as channel layer
   and cache and ``CHAT_RATE_PER_MINUTE=100000``, in its own process group.
2. ``ratio``: a tiny GPT-2 policy (bootstrapped once into ``--model-cache``) is made live with the
   local backend. Greedy decoding (``SERVING_TEMPERATURE=0``) and ``SERVING_MAX_NEW_TOKENS`` are set
   for the server and for this process, so both generate the same text. For the same prompt, ``--reps``
   times, alternating: in this process, ``get_policy()`` + ``policy.stream()``; and through the
   WebSocket (a fresh conversation each time, so the history is the same one turn). Medians of time to
   the first chunk / token fragment and chunks/s after the first; the client also stamps the
   ``_turn_new`` and ``_answer_new`` fragments, and the pre-token work of the consumer is timed here
   call by call, to show where the added TTFT goes. Also the CPU per answer: this process's for the
   in-process stream; the server's processes' (and this process's, the socket's client) for the socket.
3. ``load``: a fake OpenAI-compatible server (this script with ``--fake-openai-port``, its own process
   group) streams ``--fake-tokens`` SSE chunks ``--fake-delay-ms`` apart; a version with backend
   openai pointing at it is made live; for each ``--clients`` count, that many users connect, then all
   send at once; each client times the first token fragment and the final fragment.
4. ``first`` (not in ``all``): the first chat after a server starts, with the local tiny policy live:
   ``--reps`` times, alternating, a fresh ``bin/web`` with ``WEB_WARM_UP_SECONDS=0`` (the first chat
   loads the policy) and with the default (the process loads it before it takes connections); the
   client connects as soon as the server answers HTTP and sends once. Medians of the time from the
   server's start until it answered, of the first chat's time to first token, and of the start until
   that token.
5. Prints a table of the figures and whether each goal is met.

Everything started here is stopped on exit, on an exception and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/ is this script's folder, so first on sys.path
from common import cpu_seconds_by_group, login_session, processes

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "How do I make a cup of tea?"

GOAL_ADDED_TTFT_MS = 10.0  # issue 13
GOAL_RATE_RATIO = 0.95
GOAL_CLIENTS = 200
GOAL_LOAD_TTFT_P50_MS = 1000.0  # at GOAL_CLIENTS

TOKEN_MARK = '-live" hx-swap-oob="beforeend"'
FINAL_MARK = 'hx-swap-oob="outerHTML"'
ERROR_MARK = 'id="chat-errors" hx-swap-oob="innerHTML"'
TURN_MARK = 'id="turns" hx-swap-oob="beforeend"'
ANSWERS_MARK = '-answers" hx-swap-oob="beforeend"'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["ratio", "load", "first", "all"], default="all")
    parser.add_argument("--clients", default="50,200", help="comma list of concurrent chats for the load part")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (1)")
    parser.add_argument("--reps", type=int, default=10, help="measured repetitions of the ratio part (10)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="SERVING_MAX_NEW_TOKENS for both sides (64)")
    parser.add_argument("--model-cache", type=Path, default=Path("/tmp/rlhf_chat_bench_models"))
    parser.add_argument("--fake-tokens", type=int, default=40)
    parser.add_argument("--fake-delay-ms", type=float, default=5.0)
    parser.add_argument("--chat-timeout", type=float, default=120.0, help="seconds a chat may take (120)")
    parser.add_argument("--db", default="rlhf_chat_bench", help="database to DROP and recreate (must contain 'bench')")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument(
        "--no-compression", action="store_true", help="clients offer no permessage-deflate (default: offer it)"
    )
    parser.add_argument(
        "--ws-compression", action="store_true", help="the server offers permessage-deflate (WS_COMPRESSION=1)"
    )
    parser.add_argument("--uvicorn-args", default="", help="more uvicorn options, e.g. '--ws websockets-sansio'")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server logs (printed path)")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument("--fake-openai-port", type=int, help=argparse.SUPPRESS)  # internal: run the fake server
    args = parser.parse_args()
    args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    if "bench" not in args.db:
        parser.error("--db must contain 'bench' (it is dropped and recreated)")
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- The fake OpenAI-compatible server (runs as a child process) ------------------------------------


def run_fake_openai(port: int, tokens: int, delay_ms: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            request_line = head.split(b"\r\n", 1)[0]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await asyncio.wait_for(reader.readexactly(length), 30)
            if not request_line.startswith(b"POST /v1/chat/completions "):
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                b"Connection: close\r\n\r\n"
            )
            for i in range(tokens):
                if i:
                    await asyncio.sleep(delay_ms / 1000)
                chunk = json.dumps({"choices": [{"delta": {"content": f"tok{i} "}}]})
                writer.write(f"data: {chunk}\n\n".encode())
                await writer.drain()
            writer.write(b"data: [DONE]\n\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# --- Child processes ----------------------------------------------------------------------------


class Child:
    """A process in its own process group; ``stop`` ends the whole group."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_port(self, port: int, limit: float, http: bool) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    if not http:
                        return
                    sock.sendall(b"GET /bench-ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    if sock.recv(12).startswith(b"HTTP/1.1"):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not start in {limit:.0f} s; see {self.log_path}")

    def alive(self) -> bool:
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and (self.proc.poll() is None or self.alive()):
                time.sleep(0.1)
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.proc = None


CHILDREN: list[Child] = []


def start_server(args: argparse.Namespace, env: dict[str, str], logs: Path, label: str) -> Child:
    """The production command, ``bin/web`` (uvicorn; its settings: WS_COMPRESSION, WEB_WORKERS)."""
    cmd = [str(ROOT / "bin" / "web"), "--log-level", "warning", "--backlog", "4096", *args.uvicorn_args.split()]
    server_env = {
        **env, "HOST": "127.0.0.1", "PORT": str(args.port), "WEB_WORKERS": str(args.workers),
        "WS_COMPRESSION": "1" if args.ws_compression else "0", "WEB_PYTHON": sys.executable,
    }  # fmt: skip
    child = Child(f"uvicorn ({label})", cmd, server_env, logs / f"uvicorn-{label}.log")
    CHILDREN.append(child)
    child.start()
    child.wait_port(args.port, 60 + 10 * args.workers, http=True)
    return child


def start_fake_openai(args: argparse.Namespace, env: dict[str, str], logs: Path) -> tuple[Child, int]:
    port = free_port()
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--fake-openai-port", str(port),
        "--fake-tokens", str(args.fake_tokens), "--fake-delay-ms", str(args.fake_delay_ms),
    ]  # fmt: skip
    child = Child("fake OpenAI server", cmd, env, logs / "fake-openai.log")
    CHILDREN.append(child)
    child.start()
    child.wait_port(port, 30, http=False)
    return child, port


def stop_children() -> None:
    while CHILDREN:
        CHILDREN.pop().stop()


# --- Database set-up (sync, outside the event loop) --------------------------------------------


def recreate_database(args: argparse.Namespace) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{args.pg.rstrip('/')}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.db)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.db)))


def make_chats(prefix: str, count: int) -> list[dict[str, Any]]:
    """``count`` users, each with one conversation and a logged-in session."""
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User

    from feedback.models import Conversation

    unusable = make_password(None)
    users = User.objects.bulk_create([User(username=f"{prefix}{i:04d}", password=unusable) for i in range(count)])
    conversations = Conversation.objects.bulk_create([Conversation(user=u) for u in users])
    return [
        {"session": login_session(user), "conversation": str(conversation.id)}
        for user, conversation in zip(users, conversations, strict=True)
    ]


def make_live(**fields: Any) -> Any:
    from models_registry.models import ModelVersion
    from models_registry.services import model_version_make_live, model_version_register

    version = model_version_register(kind=ModelVersion.Kind.POLICY, **fields)
    return model_version_make_live(version=version)


def completed_answers(conversations: list[str]) -> dict[str, int]:
    from django.db.models import Count

    from feedback.models import Message

    rows = (
        Message.objects.filter(conversation_id__in=conversations, role=Message.Role.ASSISTANT)
        .values("status")
        .annotate(n=Count("id"))
    )
    return {r["status"]: r["n"] for r in rows}


def policy_folder(args: argparse.Namespace) -> Path:
    folder = args.model_cache / "policy"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        print(f"reusing the bootstrapped policy in {folder}", flush=True)
        return folder
    from training.ml.bootstrap import bootstrap

    print(f"bootstrapping a tiny policy into {folder} (about a minute) ...", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bootstrap-", dir=args.model_cache.parent))
    try:
        bootstrap(tmp / "policy", tmp / "reward", conversations=1500, policy_steps=150, reward_steps=10, batch_size=16)
        args.model_cache.mkdir(parents=True, exist_ok=True)
        for name in ("policy", "reward"):
            if (args.model_cache / name).exists():
                subprocess.run(["rm", "-rf", str(args.model_cache / name)], check=True)
            (tmp / name).rename(args.model_cache / name)
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return folder


# --- WebSocket client ---------------------------------------------------------------------------


async def ws_connect(args: argparse.Namespace, chat: dict[str, Any]) -> Any:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{args.port}/ws/chat/{chat['conversation']}/"
    return await asyncio.wait_for(
        connect(
            url,
            origin=f"http://127.0.0.1:{args.port}",  # type: ignore[arg-type]
            additional_headers={"Cookie": f"sessionid={chat['session']}"},
            open_timeout=30,
            ping_interval=None,
            max_size=2**22,
            compression=None if args.no_compression else "deflate",
        ),
        35,
    )


async def ws_chat(ws: Any, content: str, timeout: float) -> dict[str, Any]:
    """Send one message; stamp the fragments until the final one (times relative to the send)."""
    from websockets.exceptions import ConnectionClosed

    rec: dict[str, Any] = {
        "turn": None, "start": None, "tokens": [], "text": "", "final": None, "error": None, "status": None,
    }  # fmt: skip
    sent = rec["sent_at"] = time.perf_counter()
    await ws.send(json.dumps({"type": "send", "content": content}))
    deadline = sent + timeout
    while True:
        remaining = deadline - time.perf_counter()
        try:
            if remaining <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(ws.recv(), remaining)
        except TimeoutError:
            rec["error"] = "timeout"
            break
        except ConnectionClosed as exc:
            rec["error"] = f"closed ({exc.rcvd.code if exc.rcvd else '?'})"
            break
        at = (time.perf_counter() - sent) * 1000
        if isinstance(message, bytes):
            message = message.decode(errors="replace")
        if ERROR_MARK in message:
            rec["error"] = "error fragment"
            break
        if TOKEN_MARK in message:
            rec["tokens"].append(at)
            rec["text"] += html.unescape(message.split(TOKEN_MARK + ">", 1)[1].rsplit("</div>", 1)[0])
        elif FINAL_MARK in message or (ANSWERS_MARK in message and rec["start"] is not None):
            rec["final"] = at
            status = message.split('data-status="', 1)[1].split('"', 1)[0] if "data-status=" in message else "?"
            rec["status"] = status
            if status != "complete":
                rec["error"] = f"answer {status}"
            break
        elif TURN_MARK in message:
            rec["turn"] = at
        elif ANSWERS_MARK in message:
            rec["start"] = at
    return rec


def rate(stamps_ms: list[float]) -> float:
    """Chunks per second after the first."""
    return rate_of(len(stamps_ms), stamps_ms)


def rate_of(tokens: int, stamps_ms: list[float]) -> float:
    """``tokens`` delivered in the frames stamped ``stamps_ms``: tokens per second after the first."""
    if tokens < 2 or len(stamps_ms) < 2 or stamps_ms[-1] <= stamps_ms[0]:
        return float("nan")
    return (tokens - 1) / ((stamps_ms[-1] - stamps_ms[0]) / 1000)


# --- Part "ratio" -------------------------------------------------------------------------------


async def inprocess_once() -> dict[str, Any]:
    from models_registry.serving import get_policy

    started = time.perf_counter()
    policy = await get_policy()
    stamps: list[float] = []
    text = ""
    async for chunk in policy.stream([{"role": "user", "content": PROMPT}]):
        stamps.append((time.perf_counter() - started) * 1000)
        text += chunk
    return {"tokens": stamps, "text": text}


async def pre_token_breakdown(conversation_id: str) -> dict[str, float]:
    """The consumer's work between receiving ``send`` and asking the model, call by call (ms), in this
    process, against the same database and Redis."""
    from django.template.loader import render_to_string

    from core.asyncdb import db_async
    from feedback import chat
    from feedback.models import Conversation
    from models_registry.serving import get_policy

    conversation = await db_async(Conversation.objects.select_related("user").get)(id=conversation_id)
    user = conversation.user
    times: dict[str, float] = {}

    async def timed(name: str, coro: Any) -> Any:
        t = time.perf_counter()
        result = await coro
        times[name] = (time.perf_counter() - t) * 1000
        return result

    policy = await timed("get_policy", get_policy())
    prompt, (_, _, answer) = await timed(
        "send_begin (Redis, the turn and the answer)",
        db_async(chat.send_begin)(
            user=user, conversation=conversation, content=PROMPT, live_version_id=policy.version_id
        ),
    )
    t = time.perf_counter()
    render_to_string("chat/_turn_new.html", {"prompt": prompt})
    times["render _turn_new"] = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    render_to_string("chat/_answer_new.html", {"answer": answer, "prompt_id": answer.parent_id})
    times["render _answer_new"] = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    for _ in range(100):
        render_to_string("chat/_token.html", {"answer": answer, "text": "tok "})
    times["render _token (each)"] = (time.perf_counter() - t) * 1000 / 100
    return times


def own_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


async def ratio_measure(
    args: argparse.Namespace, chats: list[dict[str, Any]], spare: list[str], server_group: int
) -> dict[str, Any]:
    # Warm-ups: the server loads the model on its first chat; this process on its first stream.
    ws = await ws_connect(args, chats[0])
    try:
        warm = await ws_chat(ws, PROMPT, args.chat_timeout)
    finally:
        await ws.close()
    if warm["error"]:
        raise RuntimeError(f"warm-up chat failed: {warm['error']}")
    await inprocess_once()
    inproc, remote = [], []
    for i in range(args.reps):
        # CPU per answer: this process for the in-process stream; the server's processes (the model,
        # the consumer, the step writes) and this process (the socket client) for the socket's.
        before = own_cpu()
        inproc.append(await inprocess_once())
        inproc[-1]["cpu_ms"] = (own_cpu() - before) * 1000
        await asyncio.sleep(0.2)
        ws = await ws_connect(args, chats[i + 1])
        try:
            await asyncio.sleep(0.1)
            server_before, client_before = cpu_seconds_by_group({"server": server_group})["server"], own_cpu()
            remote.append(await ws_chat(ws, PROMPT, args.chat_timeout))
            remote[-1]["client_cpu_ms"] = (own_cpu() - client_before) * 1000
            await asyncio.sleep(0.05)  # the answer's last write, after its final fragment
            server_after = cpu_seconds_by_group({"server": server_group})["server"]
            remote[-1]["server_cpu_ms"] = (server_after - server_before) * 1000
        finally:
            await ws.close()
        await asyncio.sleep(0.2)
    breakdown = [await pre_token_breakdown(c) for c in spare]
    return {"inproc": inproc, "ws": remote, "breakdown": breakdown, "inproc_text": inproc[-1]["text"]}


def part_ratio(args: argparse.Namespace, env: dict[str, str], logs: Path) -> dict[str, Any]:
    folder = policy_folder(args)
    from models_registry.artifacts import sha256_tree

    version = make_live(artifact_path=str(folder), checksums=sha256_tree(folder), backend="local")
    print(f"live: {version.label} (local, {folder})", flush=True)
    chats = make_chats("ratio", args.reps + 1)
    spare = [c["conversation"] for c in make_chats("split", 5)]
    server = start_server(args, env, logs, "ratio")
    try:
        assert server.proc is not None
        raw = asyncio.run(ratio_measure(args, chats, spare, server.proc.pid))
    finally:
        server.stop()
    ws_errors = [r["error"] for r in raw["ws"] if r["error"]]
    in_ttft = [r["tokens"][0] for r in raw["inproc"] if r["tokens"]]
    ws_ttft = [r["tokens"][0] for r in raw["ws"] if r["tokens"]]
    in_rate = [rate(r["tokens"]) for r in raw["inproc"]]
    # The server sends tokens that come within CHAT_TOKEN_BATCH_MS as one frame, so the socket's rate
    # counts tokens, not frames: the tokens of the same answer (greedy: the in-process run of the same
    # repetition generated the same text) over the time from the first frame to the last.
    ws_rate = [rate_of(len(i["tokens"]), r["tokens"]) for i, r in zip(raw["inproc"], raw["ws"], strict=True)]
    result = {
        "reps": args.reps,
        "max_new_tokens": args.max_new_tokens,
        "inproc_ttft_ms": med(in_ttft),
        "ws_ttft_ms": med(ws_ttft),
        "inproc_rate": med(in_rate),
        "ws_rate": med(ws_rate),
        "inproc_chunks": med([len(r["tokens"]) for r in raw["inproc"]]),
        "ws_chunks": med([len(r["tokens"]) for r in raw["ws"]]),
        "ws_turn_ms": med([r["turn"] for r in raw["ws"] if r["turn"] is not None]),
        "ws_start_ms": med([r["start"] for r in raw["ws"] if r["start"] is not None]),
        "ws_final_after_last_token_ms": med(
            [r["final"] - r["tokens"][-1] for r in raw["ws"] if r["final"] and r["tokens"]]
        ),
        "inproc_total_ms": med([r["tokens"][-1] for r in raw["inproc"] if r["tokens"]]),
        "ws_last_token_ms": med([r["tokens"][-1] for r in raw["ws"] if r["tokens"]]),
        "inproc_cpu_ms": med([r["cpu_ms"] for r in raw["inproc"]]),
        "ws_server_cpu_ms": med([r["server_cpu_ms"] for r in raw["ws"]]),
        "ws_client_cpu_ms": med([r["client_cpu_ms"] for r in raw["ws"]]),
        "ws_errors": ws_errors,
        "breakdown": {k: med([b[k] for b in raw["breakdown"]]) for k in raw["breakdown"][0]},
        "sample_text": raw["inproc_text"][:120],
        "raw_inproc_ttft": in_ttft,
        "raw_ws_ttft": ws_ttft,
    }
    result["added_ttft_ms"] = result["ws_ttft_ms"] - result["inproc_ttft_ms"]
    result["rate_ratio"] = result["ws_rate"] / result["inproc_rate"]
    return result


# --- Part "first" -------------------------------------------------------------------------------


async def first_chat(args: argparse.Namespace, chat: dict[str, Any]) -> dict[str, Any]:
    ws = await ws_connect(args, chat)
    try:
        return await ws_chat(ws, PROMPT, args.chat_timeout)
    finally:
        await ws.close()


def part_first(args: argparse.Namespace, env: dict[str, str], logs: Path) -> dict[str, Any]:
    folder = policy_folder(args)
    from models_registry.artifacts import sha256_tree

    version = make_live(artifact_path=str(folder), checksums=sha256_tree(folder), backend="local")
    print(f"live: {version.label} (local, {folder}); first chats after a start ...", flush=True)
    chats = make_chats("first", 2 * args.reps)
    rows: dict[str, list[dict[str, Any]]] = {"0": [], "default": []}
    for rep in range(args.reps):
        for warm in rows:
            server_env = {**env, "WEB_WARM_UP_SECONDS": "0"} if warm == "0" else env
            began = time.perf_counter()
            server = start_server(args, server_env, logs, f"first-{warm}-{rep}")
            up_ms = (time.perf_counter() - began) * 1000
            try:
                rec = asyncio.run(first_chat(args, chats.pop()))
            finally:
                server.stop()
            ttft = rec["tokens"][0] if rec["tokens"] else None
            since_start = (rec["sent_at"] - began) * 1000 + ttft if ttft is not None else None
            row = {"up_ms": up_ms, "ttft_ms": ttft, "start_to_token_ms": since_start, "error": rec["error"]}
            rows[warm].append(row)
    return {
        warm: {
            key: med([r[key] for r in runs if r[key] is not None]) for key in ("up_ms", "ttft_ms", "start_to_token_ms")
        }
        | {"errors": [r["error"] for r in runs if r["error"]], "raw_ttft_ms": [r["ttft_ms"] for r in runs]}
        for warm, runs in rows.items()
    }


# --- Part "load" --------------------------------------------------------------------------------


def cpu_seconds(groups: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process group named in ``groups`` (name: group id), of PostgreSQL's
    processes and of this process (``client``)."""
    return cpu_seconds_by_group(groups) | {"client": own_cpu()}


def rss_kib(group: int) -> int:
    """The resident memory of process group ``group``'s processes, KiB."""
    total = 0
    for folder, _, fields in processes():
        if int(fields[2]) != group:
            continue
        try:
            status = (folder / "status").read_text()
        except OSError:  # gone meanwhile
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


async def load_round(args: argparse.Namespace, chats: list[dict[str, Any]], groups: dict[str, int]) -> dict[str, Any]:
    connect_errors: list[str] = []

    async def open_one(chat: dict[str, Any]) -> Any:
        try:
            return await ws_connect(args, chat)
        except Exception as exc:  # counted and reported
            connect_errors.append(f"{type(exc).__name__}: {exc}"[:120])
            return None

    rss_before = rss_kib(groups["server"])
    t = time.perf_counter()
    sockets = await asyncio.gather(*(open_one(c) for c in chats))
    connect_s = time.perf_counter() - t
    live = [ws for ws in sockets if ws is not None]
    try:
        await asyncio.sleep(0.5)
        rss_open = rss_kib(groups["server"])
        cpu_before = cpu_seconds(groups)
        t = time.perf_counter()
        records = await asyncio.gather(*(ws_chat(ws, PROMPT, args.chat_timeout) for ws in live))
        wall_s = time.perf_counter() - t
        cpu_after = cpu_seconds(groups)
        rss_done = rss_kib(groups["server"])
    finally:
        await asyncio.gather(*(asyncio.wait_for(ws.close(), 10) for ws in live), return_exceptions=True)
    # CPU ms per chat from the send to the last final fragment (the last answers' final writes may
    # land just after: a slight undercount for the server and PostgreSQL).
    cpu_ms = {k: (cpu_after[k] - cpu_before[k]) * 1000 / max(len(live), 1) for k in cpu_after}
    return {
        "connect_errors": connect_errors, "connect_s": connect_s, "records": records, "wall_s": wall_s,
        "cpu_ms": cpu_ms,
        # The server's resident memory (KiB, all its processes) per socket: once open, and after a chat.
        "kib_per_socket_open": (rss_open - rss_before) / max(len(live), 1),
        "kib_per_socket_chatted": (rss_done - rss_before) / max(len(live), 1),
    }  # fmt: skip


def part_load(args: argparse.Namespace, env: dict[str, str], logs: Path) -> list[dict[str, Any]]:
    fake, fake_port = start_fake_openai(args, env, logs)
    results = []
    try:
        base_url = f"http://127.0.0.1:{fake_port}"
        version = make_live(backend="openai", base_url=base_url, model_name="fake", artifact_path="", checksums={})
        print(f"live: {version.label} (openai, fake server on port {fake_port})", flush=True)
        warm = make_chats("warm", 3)
        rounds = [(n, make_chats(f"load{n}-", n)) for n in args.client_counts]
        server = start_server(args, env, logs, "load")
        try:
            assert server.proc is not None
            assert fake.proc is not None
            groups = {"server": server.proc.pid, "fake": fake.proc.pid}  # each leads its process group
            asyncio.run(load_round(args, warm, groups))
            for n, chats in rounds:
                print(f"load: {n} concurrent chats ...", flush=True)
                raw = asyncio.run(load_round(args, chats, groups))
                time.sleep(1.0)  # the last answers' final writes
                stored = completed_answers([c["conversation"] for c in chats])
                recs = raw["records"]
                errors: dict[str, int] = {}
                if raw["connect_errors"]:
                    errors["connect"] = len(raw["connect_errors"])
                for r in recs:
                    if r["error"]:
                        errors[r["error"]] = errors.get(r["error"], 0) + 1
                    elif r["text"] != "".join(f"tok{i} " for i in range(args.fake_tokens)):
                        # Every token, in order (a frame may carry several: CHAT_TOKEN_BATCH_MS).
                        errors["text"] = errors.get("text", 0) + 1
                ttft = [r["tokens"][0] for r in recs if r["tokens"]]
                total = [r["final"] for r in recs if r["final"] is not None and not r["error"]]
                results.append({
                    "clients": n,
                    "connect_s": raw["connect_s"],
                    "wall_s": raw["wall_s"],
                    "turn_p50": pct([r["turn"] for r in recs if r["turn"] is not None], 50),
                    "start_p50": pct([r["start"] for r in recs if r["start"] is not None], 50),
                    "ttft_p50": pct(ttft, 50),
                    "ttft_p99": pct(ttft, 99),
                    "frames_p50": pct([len(r["tokens"]) for r in recs if r["tokens"]], 50),
                    "total_p50": pct(total, 50),
                    "total_p99": pct(total, 99),
                    "errors": errors,
                    "error_count": sum(errors.values()),
                    "complete_stored": stored.get("complete", 0),
                    "stored": stored,
                    "connect_error_samples": raw["connect_errors"][:3],
                    "cpu_ms": raw["cpu_ms"],
                    "kib_per_socket_open": raw["kib_per_socket_open"],
                    "kib_per_socket_chatted": raw["kib_per_socket_chatted"],
                })  # fmt: skip
        finally:
            server.stop()
    finally:
        fake.stop()
    return results


# --- Report -------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace, ratio: dict[str, Any] | None, load: list[dict[str, Any]], first: dict[str, Any] | None
) -> None:
    def ok(flag: bool) -> str:
        return "MET" if flag else "MISSED"

    deflate = "on" if args.ws_compression else "off"
    print(
        f"\n== chat WebSocket benchmark (bin/web: uvicorn, {args.workers} worker(s), permessage-deflate {deflate}, "
        f"{os.cpu_count()} CPUs)"
    )
    if ratio:
        print(
            f"\n-- ratio: local tiny GPT-2, greedy, max_new_tokens={ratio['max_new_tokens']}, "
            f"medians of {ratio['reps']} runs (a token = one streamer piece; a frame may carry several)"
        )
        print(f"{'':<26} {'in-process':>11} {'WebSocket':>10}")
        print(f"{'time to first chunk, ms':<26} {ratio['inproc_ttft_ms']:>11.1f} {ratio['ws_ttft_ms']:>10.1f}")
        print(f"{'tokens/s after the first':<26} {ratio['inproc_rate']:>11.1f} {ratio['ws_rate']:>10.1f}")
        print(f"{'chunks (frames) per answer':<26} {ratio['inproc_chunks']:>11.0f} {ratio['ws_chunks']:>10.0f}")
        print(f"{'last chunk at, ms':<26} {ratio['inproc_total_ms']:>11.1f} {ratio['ws_last_token_ms']:>10.1f}")
        print(
            f"{'CPU per answer, ms':<26} {ratio['inproc_cpu_ms']:>11.1f} {ratio['ws_server_cpu_ms']:>10.1f}"
            f"  (socket: the server's; its client: {ratio['ws_client_cpu_ms']:.1f})"
        )
        print(
            f"added TTFT {ratio['added_ttft_ms']:.1f} ms (goal <= {GOAL_ADDED_TTFT_MS:.0f}): "
            f"{ok(ratio['added_ttft_ms'] <= GOAL_ADDED_TTFT_MS)}; tokens/s ratio {ratio['rate_ratio']:.2f}x "
            f"(goal >= {GOAL_RATE_RATIO}): {ok(ratio['rate_ratio'] >= GOAL_RATE_RATIO)}; "
            f"WebSocket errors: {len(ratio['ws_errors'])}"
        )
        print(
            f"client-side stamps after send (median ms): _turn_new {ratio['ws_turn_ms']:.1f}, "
            f"_answer_new {ratio['ws_start_ms']:.1f}, first token {ratio['ws_ttft_ms']:.1f}, "
            f"final fragment {ratio['ws_final_after_last_token_ms']:.1f} after the last token"
        )
        print("consumer work before the model is asked, timed call by call in this process (median ms):")
        for name, value in ratio["breakdown"].items():
            print(f"  {name:<28} {value:>7.2f}")
    if first:
        print(f"\n-- first chat after a start: local tiny GPT-2, medians of {args.reps} starts each, alternating")
        print(f"{'WEB_WARM_UP_SECONDS':<20} {'server up, ms':>13} {'first TTFT, ms':>14} {'start to token, ms':>18}")
        for warm, r in first.items():
            print(f"{warm:<20} {r['up_ms']:>13.0f} {r['ttft_ms']:>14.0f} {r['start_to_token_ms']:>18.0f}")
            if r["errors"]:
                print(f"      errors: {r['errors']}")
    if load:
        print(
            f"\n-- load: fake OpenAI server, {args.fake_tokens} tokens {args.fake_delay_ms:g} ms apart "
            f"(unloaded floor ~{(args.fake_tokens - 1) * args.fake_delay_ms:.0f} ms per answer)"
        )
        header = (
            f"{'chats':>5} {'connect s':>9} {'TTFT p50':>8} {'TTFT p99':>8} {'total p50':>9} {'total p99':>9} "
            f"{'wall s':>6} {'errors':>6} {'complete in DB':>14}"
        )
        print(header)
        print("-" * len(header))
        for r in load:
            print(
                f"{r['clients']:>5} {r['connect_s']:>9.2f} {r['ttft_p50']:>8.0f} {r['ttft_p99']:>8.0f} "
                f"{r['total_p50']:>9.0f} {r['total_p99']:>9.0f} {r['wall_s']:>6.1f} {r['error_count']:>6} "
                f"{r['complete_stored']:>6}/{r['clients']:<7}"
            )
            print(
                f"      p50 ms after the send: _turn_new {r['turn_p50']:.0f}, _answer_new {r['start_p50']:.0f}; "
                f"token frames per answer p50 {r['frames_p50']:.0f} ({args.fake_tokens} tokens)"
            )
            c = r["cpu_ms"]
            print(
                f"      CPU ms per chat: server {c['server']:.1f}, PostgreSQL {c['postgres']:.1f}, "
                f"fake model server {c['fake']:.1f}, these clients {c['client']:.1f}"
            )
            print(
                f"      server memory per socket, KiB: {r['kib_per_socket_open']:.0f} once open, "
                f"{r['kib_per_socket_chatted']:.0f} after its chat"
            )
            if r["errors"]:
                print(f"      errors: {r['errors']}; stored statuses {r['stored']} {r['connect_error_samples']}")
        print("times in ms from the send; total = final fragment; errors = failed connects + error fragments")
        print("+ timeouts + answers not complete or whose streamed text is not every token in order")
        big = [r for r in load if r["clients"] >= GOAL_CLIENTS]
        if big:
            good = all(r["error_count"] == 0 and r["complete_stored"] == r["clients"] for r in big)
            print(f"goal: {GOAL_CLIENTS} concurrent chats, no errors, all stored complete: {ok(good)}")
            fast = all(r["ttft_p50"] <= GOAL_LOAD_TTFT_P50_MS for r in big)
            print(f"goal: TTFT p50 <= {GOAL_LOAD_TTFT_P50_MS:.0f} ms at {GOAL_CLIENTS} chats: {ok(fast)}")


# --- Main ---------------------------------------------------------------------------------------


def configure_server(args: argparse.Namespace, **overrides: str) -> dict[str, str]:
    """The benchmark server's settings, in this process's environment too (it is configured the same
    way, and the server inherits it): open-file limit raised for many sockets, a free port in
    ``args.port``, DEBUG off, limits out of the way, greedy generation, and ``overrides``. Returns the
    environment to start the server with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    args.port = free_port()
    os.environ.update(
        DJANGO_SETTINGS_MODULE="rlhf_site.settings",
        DEBUG="0",
        SECRET_KEY="bench-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        API_THROTTLE_RATE="off",
        DATABASE_URL=f"{args.pg.rstrip('/')}/{args.db}",
        REDIS_URL=args.redis,
        SERVING_MAX_NEW_TOKENS=str(args.max_new_tokens),
        SERVING_TEMPERATURE="0",  # greedy: both sides generate the same text
        SERVING_OPENAI_ALLOWED_HOSTS="127.0.0.1",  # the fake OpenAI-compatible server
        PYTHONUNBUFFERED="1",
        **overrides,
    )
    return dict(os.environ)


def main() -> None:
    args = parse_args()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if args.fake_openai_port:
        run_fake_openai(args.fake_openai_port, args.fake_tokens, args.fake_delay_ms)
        return
    env = configure_server(args, CHAT_RATE_PER_MINUTE="100000")
    logs = Path(tempfile.mkdtemp(prefix="chat-bench-logs-"))

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    ratio, load, first = None, [], None
    try:
        recreate_database(args)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        if args.part in ("ratio", "all"):
            ratio = part_ratio(args, env, logs)
        if args.part in ("load", "all"):
            load = part_load(args, env, logs)
        if args.part == "first":
            first = part_first(args, env, logs)
    finally:
        stop_children()
    report(args, ratio, load, first)
    if args.json:
        args.json.write_text(json.dumps({"ratio": ratio, "load": load, "first": first}, indent=2, default=str))
    if args.keep_logs:
        print(f"server logs: {logs}")
    else:
        subprocess.run(["rm", "-rf", str(logs)], check=False)


if __name__ == "__main__":
    main()
