"""The chat socket's own CPU per answer, in one process: what the platform adds to a model's stream.

Run by hand (not a test)::

    .venv/bin/python bench/chat_overhead.py [--answers 40] [--rounds 5] [--gap-ms 1] [--sends 200]

``bench/chat_load.py --part ratio`` compares tokens/s through the socket with the model alone, but on
2 cores that ratio moves by 20% from run to run with the machine. This measures the cause instead:
the CPU the chat path spends on an answer besides the model's. On a database of its own
(``rlhf_chat_overhead_bench``, created and migrated) and Redis, a scripted policy streams a fixed
answer (38 chunks, five numbered steps, ``--gap-ms`` apart: a model at about 1,000 tokens/s) and,
alternating:
- bare: the policy's stream alone, iterated in this process;
- socket: the same answer asked for through the real ASGI application and ``ChatConsumer`` (session
  authentication, origin check, the turn's trip, token frames, step rows and fragments, the final
  fragment and the answer's last trip), driven by Channels' ``WebsocketCommunicator``, a fresh
  conversation per answer (connected before the clock starts).
Each side's CPU is this process's (``time.process_time``: every thread, the database threads
included; PostgreSQL's own is not). Prints the medians per answer over ``--rounds`` rounds of
``--answers`` answers and the difference: the chat path's CPU per answer, the communicator's share
included (the same on both sides of a before/after comparison); and how long after the model
passed on its last chunk the frame that carries it reached the client (the batching window,
``CHAT_TOKEN_BATCH_MS``, may hold it).

Then the send's trip alone (``--sends``, 0 to skip), steadier than the whole: the CPU of
``feedback.chat.send_begin`` (the rate limit, the user's turn, the history, the route, the answer
begun) called in this thread into conversations of two earlier turns, per call (``time.thread_time``),
median of the rounds, with the statements it sends.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ensure_database, login_session, setup_django

ANSWER = (
    "Here is how to make a cup of tea:\n1. Boil the water in a clean kettle.\n2. Warm the pot with a"
    " little of the water.\n3. Add one spoon of tea per cup.\n4. Pour the water and wait four"
    " minutes.\n5. Add milk if you like."
)


TOKEN_MARK = '-live" hx-swap-oob="beforeend"'


def chunks_of(text: str, count: int = 38) -> list[str]:
    """``text`` in ``count`` pieces cut at word starts, as a tokenizer's streamer would pass them on."""
    words: list[str] = []
    for piece in text.split(" "):
        words.append(piece if not words else " " + piece)
    size = len(words) / count
    return ["".join(words[round(i * size) : round((i + 1) * size)]) for i in range(count)]


class ScriptedPolicy:
    """A served policy that streams ``chunks`` ``gap`` seconds apart."""

    def __init__(self, version: Any, chunks: list[str], gap: float) -> None:
        self.version_id, self.label = version.id, version.label
        self.chunks, self.gap = chunks, gap
        self.last_at = 0.0  # when the last chunk was passed on (perf_counter)

    async def stream(self, messages: Any, *, max_new_tokens: Any = None, options: Any = None, usage: Any = None) -> Any:
        for chunk in self.chunks:
            await asyncio.sleep(self.gap)
            self.last_at = time.perf_counter()
            yield chunk


def make_chat(prefix: str, count: int) -> tuple[str, list[str]]:
    """A user with a logged-in session and ``count`` conversations."""
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User

    from feedback.models import Conversation

    user = User.objects.create(username=f"{prefix}-{time.time_ns()}", password=make_password(None))
    conversations = Conversation.objects.bulk_create([Conversation(user=user) for _ in range(count)])
    return login_session(user), [str(c.id) for c in conversations]


async def bare_answer(policy: ScriptedPolicy) -> float:
    started = time.process_time()
    text = ""
    async for chunk in policy.stream([{"role": "user", "content": "tea?"}]):
        text += chunk
    assert text == ANSWER
    return time.process_time() - started


async def socket_answer(session: str, conversation: str, policy: ScriptedPolicy) -> tuple[float, float]:
    """CPU seconds of one answer through the socket, and how long after the model's last chunk the
    frame that carries it came (ms)."""
    from channels.testing import WebsocketCommunicator

    from rlhf_site.asgi import application

    cookie = f"sessionid={session}".encode()
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver"), (b"cookie", cookie)]
    communicator = WebsocketCommunicator(application, f"/ws/chat/{conversation}/", headers=headers)
    connected, code = await communicator.connect()
    if not connected:
        raise RuntimeError(f"the socket was refused ({code})")
    try:
        started = time.process_time()
        await communicator.send_to(text_data=json.dumps({"type": "send", "content": "How do I make a cup of tea?"}))
        text, last_wait = "", float("nan")
        while True:
            frame = await communicator.receive_from(timeout=30)
            if TOKEN_MARK in frame:
                text += html.unescape(frame.split(TOKEN_MARK + ">", 1)[1].rsplit("</div>", 1)[0])
                if text == ANSWER:
                    last_wait = (time.perf_counter() - policy.last_at) * 1000
            if 'hx-swap-oob="outerHTML"' in frame:
                if 'data-status="complete"' not in frame or text != ANSWER:
                    raise RuntimeError("the answer did not complete, or its tokens did not all come")
                return time.process_time() - started, last_wait
            if 'id="chat-errors" hx-swap-oob="innerHTML"' in frame:
                raise RuntimeError(f"error fragment: {frame[:200]}")
    finally:
        await communicator.disconnect()


async def measure(args: argparse.Namespace, policy: ScriptedPolicy, warm: tuple[str, str]) -> list[dict[str, float]]:
    rounds = []
    await socket_answer(*warm, policy)  # warm-up: templates, pools, imports
    for _ in range(args.rounds):
        session, conversations = await asyncio.to_thread(make_chat, "overhead", args.answers)
        bare, socket, waits = [], [], []
        for conversation in conversations:
            bare.append(await bare_answer(policy))
            cpu, wait = await socket_answer(session, conversation, policy)
            socket.append(cpu)
            waits.append(wait)
        rounds.append(
            {
                "bare": statistics.median(bare) * 1000,
                "socket": statistics.median(socket) * 1000,
                "last_wait": statistics.median(waits),
            }
        )
        print(
            f"  round: bare {rounds[-1]['bare']:.2f} ms, socket {rounds[-1]['socket']:.2f} ms,"
            f" the last chunk's frame {rounds[-1]['last_wait']:.2f} ms after the model sent it",
            flush=True,
        )
    return rounds


def send_trip(rounds: int, sends: int) -> None:
    """The send's trip: CPU per ``send_begin`` call and statements per call (see the docstring)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from feedback import chat
    from feedback.models import Conversation, Message

    _, ids = make_chat("send", rounds * sends)
    conversations = list(Conversation.objects.filter(id__in=ids).select_related("user"))
    for conversation in conversations:  # two earlier turns, each answered
        for turn in range(2):
            prompt = Message.objects.create(conversation=conversation, role="user", content=f"Question {turn}?")
            Message.objects.create(conversation=conversation, role="assistant", parent=prompt, content="An answer.")
    per_call = []
    for r in range(rounds):
        batch = conversations[r * sends : (r + 1) * sends]
        started = time.thread_time()
        for conversation in batch:
            chat.send_begin(user=conversation.user, conversation=conversation, content="Tea?", live_version_id=None)
        per_call.append((time.thread_time() - started) / sends * 1000)
    with CaptureQueriesContext(connection) as queries:
        chat.send_begin(user=conversations[0].user, conversation=conversations[0], content="Tea?", live_version_id=None)
    print(
        f"the send's trip (send_begin): {statistics.median(per_call):.2f} ms of CPU per call"
        f" ({min(per_call):.2f}-{max(per_call):.2f} over {rounds} rounds of {sends}),"
        f" {len(queries.captured_queries)} statements"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=40, help="answers per round on each side (40)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gap-ms", type=float, default=1.0, help="time between two chunks of the answer (1 ms)")
    parser.add_argument("--sends", type=int, default=200, help="send_begin calls per round for the send's trip (200)")
    parser.add_argument("--db", default="rlhf_chat_overhead_bench")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    pg = "postgres://postgres@127.0.0.1:5432"
    ensure_database(pg, args.db)
    setup_django(
        f"{pg}/{args.db}",
        REDIS_URL=args.redis,
        CHAT_RATE_PER_MINUTE="100000",
        ALLOWED_HOSTS="testserver",
        SERVING_OPENAI_ALLOWED_HOSTS="127.0.0.1:9",
    )
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from feedback import chat
    from models_registry.models import ModelVersion
    from models_registry.services import model_version_make_live, model_version_register

    version = model_version_make_live(
        version=model_version_register(
            kind=ModelVersion.Kind.POLICY,
            artifact_path="",
            checksums={},
            backend=ModelVersion.Backend.OPENAI,
            base_url="http://127.0.0.1:9/v1",
            model_name="scripted",
        )
    )
    chunks = chunks_of(ANSWER)
    policy = ScriptedPolicy(version, chunks, args.gap_ms / 1000)

    async def get_policy() -> ScriptedPolicy:
        return policy

    chat.stream.get_policy = get_policy  # type: ignore[assignment]  # the model is the boundary faked here
    chat.stream.served_policy = lambda: policy  # type: ignore[attr-defined]
    session, conversations = make_chat("warm", 1)
    print(f"{len(chunks)} chunks {args.gap_ms:g} ms apart, {args.rounds} rounds of {args.answers} answers", flush=True)
    rounds = asyncio.run(measure(args, policy, (session, conversations[0])))
    bare = statistics.median(r["bare"] for r in rounds)
    socket = statistics.median(r["socket"] for r in rounds)
    added = [r["socket"] - r["bare"] for r in rounds]
    print(
        f"CPU per answer (medians of {args.rounds} rounds): bare stream {bare:.2f} ms, through the socket"
        f" {socket:.2f} ms; the chat path adds {statistics.median(added):.2f} ms"
        f" ({min(added):.2f}-{max(added):.2f} over the rounds); the last chunk reached the client"
        f" {statistics.median(r['last_wait'] for r in rounds):.2f} ms after the model sent it"
    )
    if args.sends:
        send_trip(args.rounds, args.sends)


if __name__ == "__main__":
    main()
