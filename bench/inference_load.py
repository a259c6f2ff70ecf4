"""Benchmark of the inference API (``POST /v1/chat/completions``, streaming) under uvicorn, beside
``bench/chat_load.py`` (whose server, database and fake model server it reuses).

Run by hand (not a test)::

    .venv/bin/python bench/inference_load.py [--part ratio|load|all] [--clients 200] [--reps 10]

1. Drops and recreates the PostgreSQL database ``rlhf_inference_bench``, migrates it, and creates
   users with an API token each. uvicorn serves ``rlhf_site.asgi:application`` with DEBUG=0, Redis as
   cache, and the inference limits raised out of the way.
2. ``ratio``: the tiny bootstrapped policy (cached in ``--model-cache``) is live with the local
   backend, greedy, ``SERVING_MAX_NEW_TOKENS`` on both sides. ``--reps`` times, alternating: in this
   process ``get_policy()`` + ``policy.stream()``, and a streamed completion through the API (httpx,
   a new conversation each time). Medians of the time to the first text chunk, and of tokens/s after
   it: the server sends the tokens that come within ``CHAT_TOKEN_BATCH_MS`` as one event, so the API's
   rate counts the tokens of the answer (greedy: the in-process run of the same repetition generated
   the same text), not its events, over the time from the first event to the last.
3. ``load``: the fake OpenAI-compatible server of chat_load.py streams ``--fake-tokens`` chunks
   ``--fake-delay-ms`` apart; a version with the openai backend pointing at it is live; ``--clients``
   users each stream one completion, all at once. Errors are counted, and the database is asked
   whether every answer was stored ``complete`` with all its text.
4. Prints the figures and whether each goal is met.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import chat_load as base  # bench/ is this script's folder, so first on sys.path

GOAL_ADDED_TTFT_MS = base.GOAL_ADDED_TTFT_MS
GOAL_RATE_RATIO = base.GOAL_RATE_RATIO
GOAL_CLIENTS = base.GOAL_CLIENTS


def parse_args() -> Any:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["ratio", "load", "all"], default="all")
    parser.add_argument("--clients", type=int, default=200, help="concurrent streaming clients (200)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--model-cache", type=Path, default=Path("/tmp/rlhf_chat_bench_models"))
    parser.add_argument("--fake-tokens", type=int, default=40)
    parser.add_argument("--fake-delay-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds one completion may take (180)")
    parser.add_argument("--db", default="rlhf_inference_bench", help="database to DROP and recreate")
    parser.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    args = parser.parse_args()
    if "bench" not in args.db:
        parser.error("--db must contain 'bench' (it is dropped and recreated)")
    return args


def make_keys(prefix: str, count: int) -> list[str]:
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    unusable = make_password(None)
    users = User.objects.bulk_create([User(username=f"{prefix}{i:04d}", password=unusable) for i in range(count)])
    return [Token.objects.create(user=user).key for user in users]


async def api_stream(client: Any, port: int, key: str, timeout: float) -> dict[str, Any]:
    """One streamed completion; times (ms from sending) of each text chunk, the id, the text."""
    body = {"model": "policy", "messages": [{"role": "user", "content": base.PROMPT}], "stream": True}
    record: dict[str, Any] = {"tokens": [], "text": "", "id": None, "error": None}
    started = time.perf_counter()
    try:
        async with client.stream(
            "POST",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
        ) as response:
            if response.status_code != 200:
                record["error"] = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    record["done"] = True
                    break
                event = json.loads(data)
                if "error" in event:
                    record["error"] = event["error"]["message"]
                    break
                record["id"] = event["id"]
                content = event["choices"][0]["delta"].get("content") if event["choices"] else None
                if content:
                    record["tokens"].append((time.perf_counter() - started) * 1000)
                    record["text"] += content
    except Exception as exc:  # counted and reported
        record["error"] = f"{type(exc).__name__}: {exc}"[:200]
    if record["error"] is None and not record.get("done"):
        record["error"] = "no [DONE]"
    return record


async def ratio_measure(args: Any, keys: list[str]) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient() as client:
        warm = await api_stream(client, args.port, keys[0], args.timeout)  # the server loads the model
        if warm["error"]:
            raise RuntimeError(f"warm-up completion failed: {warm['error']}")
        await base.inprocess_once()
        inproc, remote = [], []
        for i in range(args.reps):
            inproc.append(await base.inprocess_once())
            await asyncio.sleep(0.2)
            remote.append(await api_stream(client, args.port, keys[i + 1], args.timeout))
            await asyncio.sleep(0.2)
    return {"inproc": inproc, "api": remote}


def part_ratio(args: Any, env: dict[str, str], logs: Path) -> dict[str, Any]:
    from models_registry.artifacts import sha256_tree

    folder = base.policy_folder(args)
    version = base.make_live(artifact_path=str(folder), checksums=sha256_tree(folder), backend="local")
    print(f"live: {version.label} (local, {folder})", flush=True)
    keys = make_keys("ratio", args.reps + 1)
    server = base.start_server(args, env, logs, "ratio")
    try:
        raw = asyncio.run(ratio_measure(args, keys))
    finally:
        server.stop()
    in_ttft = [r["tokens"][0] for r in raw["inproc"] if r["tokens"]]
    api_ttft = [r["tokens"][0] for r in raw["api"] if r["tokens"]]
    result = {
        "reps": args.reps,
        "inproc_ttft_ms": base.med(in_ttft),
        "api_ttft_ms": base.med(api_ttft),
        "inproc_rate": base.med([base.rate(r["tokens"]) for r in raw["inproc"]]),
        "api_rate": base.med(
            [base.rate_of(len(i["tokens"]), r["tokens"]) for i, r in zip(raw["inproc"], raw["api"], strict=True)]
        ),
        "inproc_last_ms": base.med([r["tokens"][-1] for r in raw["inproc"] if r["tokens"]]),
        "api_last_ms": base.med([r["tokens"][-1] for r in raw["api"] if r["tokens"]]),
        "inproc_chunks": base.med([len(r["tokens"]) for r in raw["inproc"]]),
        "api_chunks": base.med([len(r["tokens"]) for r in raw["api"]]),
        "api_errors": [r["error"] for r in raw["api"] if r["error"]],
        "same_text": all(r["text"] == raw["inproc"][-1]["text"] for r in raw["api"]),
    }
    result["added_ttft_ms"] = result["api_ttft_ms"] - result["inproc_ttft_ms"]
    result["rate_ratio"] = result["api_rate"] / result["inproc_rate"]
    return result


def stored_answers(ids: list[str]) -> dict[str, Any]:
    from django.db.models import Count

    from feedback.models import Message

    rows = Message.objects.filter(id__in=ids, role=Message.Role.ASSISTANT).values("status").annotate(n=Count("id"))
    return {r["status"]: r["n"] for r in rows}


async def load_round(args: Any, keys: list[str]) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=args.clients + 10, max_keepalive_connections=args.clients + 10)
    async with httpx.AsyncClient(limits=limits) as client:
        started = time.perf_counter()
        records = await asyncio.gather(*(api_stream(client, args.port, key, args.timeout) for key in keys))
        wall_s = time.perf_counter() - started
    return {"records": records, "wall_s": wall_s}


def part_load(args: Any, env: dict[str, str], logs: Path) -> dict[str, Any]:
    fake, fake_port = base.start_fake_openai(args, env, logs)
    try:
        base.make_live(
            artifact_path="",
            checksums={},
            backend="openai",
            base_url=f"http://127.0.0.1:{fake_port}",
            model_name="fake",
        )
        keys = make_keys("load", args.clients)
        server = base.start_server(args, env, logs, "load")
        try:
            raw = asyncio.run(load_round(args, keys))
        finally:
            server.stop()
    finally:
        fake.stop()
    records = raw["records"]
    errors = [r["error"] for r in records if r["error"]]
    expected = "".join(f"tok{i} " for i in range(args.fake_tokens))
    ids = [r["id"] for r in records if r["id"]]
    from feedback.models import Message

    texts_ok = sum(1 for m in Message.objects.filter(id__in=ids).only("content") if m.content == expected)
    return {
        "clients": args.clients,
        "errors": len(errors),
        "error_samples": errors[:5],
        "stored": stored_answers(ids),
        "stored_with_all_text": texts_ok,
        "ttft_p50_ms": base.med([r["tokens"][0] for r in records if r["tokens"]]),
        "ttft_p95_ms": base.pct([r["tokens"][0] for r in records if r["tokens"]], 95),
        "total_p95_ms": base.pct([r["tokens"][-1] for r in records if r["tokens"]], 95),
        "wall_s": raw["wall_s"],
    }


def report(ratio: dict[str, Any] | None, load: dict[str, Any] | None) -> None:
    if ratio:
        print("\n== /v1/chat/completions (streamed) vs in-process generation, tiny local policy, greedy")
        print(
            f"  reps {ratio['reps']}; tokens (chunks) in-process {ratio['inproc_chunks']}, events through the API "
            f"{ratio['api_chunks']}; last at {ratio['inproc_last_ms']:.1f} and {ratio['api_last_ms']:.1f} ms"
        )
        print(f"  TTFT in-process {ratio['inproc_ttft_ms']:.1f} ms, API {ratio['api_ttft_ms']:.1f} ms")
        ok = ratio["added_ttft_ms"] <= GOAL_ADDED_TTFT_MS
        print(
            f"  added TTFT {ratio['added_ttft_ms']:.1f} ms (goal <= {GOAL_ADDED_TTFT_MS}): {'met' if ok else 'NOT met'}"
        )
        ok = ratio["rate_ratio"] >= GOAL_RATE_RATIO
        print(
            f"  tokens/s in-process {ratio['inproc_rate']:.1f}, API {ratio['api_rate']:.1f}: ratio "
            f"{ratio['rate_ratio']:.2f} (goal >= {GOAL_RATE_RATIO}): {'met' if ok else 'NOT met'}"
        )
        print(f"  API errors: {ratio['api_errors'] or 'none'}; same text both ways: {ratio['same_text']}")
    if load:
        print(f"\n== {load['clients']} concurrent streamed completions (fake OpenAI-compatible model server)")
        ok = load["errors"] == 0 and load["stored_with_all_text"] == load["clients"]
        print(f"  errors {load['errors']} {load['error_samples'] or ''}")
        verdict = "met" if ok else "NOT met"
        print(f"  stored {load['stored']}, with all their text {load['stored_with_all_text']}: {verdict}")
        print(
            f"  TTFT p50 {load['ttft_p50_ms']:.0f} ms, p95 {load['ttft_p95_ms']:.0f} ms; last chunk p95 "
            f"{load['total_p95_ms']:.0f} ms; wall {load['wall_s']:.1f} s"
        )


def main() -> None:
    args = parse_args()
    if str(base.ROOT) not in sys.path:
        sys.path.insert(0, str(base.ROOT))
    env = base.configure_server(
        args, INFERENCE_RATE_PER_MINUTE="100000", INFERENCE_MAX_CONCURRENT_PER_USER="1000", LOG_LEVEL="WARNING"
    )
    logs = Path(tempfile.mkdtemp(prefix="inference-bench-logs-"))

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    ratio = load = None
    try:
        base.recreate_database(args)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        if args.part in ("ratio", "all"):
            ratio = part_ratio(args, env, logs)
        if args.part in ("load", "all"):
            load = part_load(args, env, logs)
    finally:
        base.stop_children()
    report(ratio, load)
    print(f"\nserver logs: {logs}")
    if args.json:
        args.json.write_text(json.dumps({"ratio": ratio, "load": load}, indent=2, default=str))


if __name__ == "__main__":
    main()
