"""Serving the live policy: the local backend on the bootstrapped model, the openai backend against a
fake OpenAI-compatible server on loopback, and hot swap between versions."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from prometheus_client import REGISTRY

from models_registry import serving
from models_registry.artifacts import sha256_tree
from models_registry.models import ModelVersion
from models_registry.services import model_version_make_live, model_version_register
from models_registry.serving import ServingError, get_policy
from tests.helpers import free_port

QUESTION = [{"role": "user", "content": "How do I boil an egg?"}]
GENERATE_THREAD = "serving-generate-"


@pytest.fixture(autouse=True)
async def _fresh_serving(settings):
    settings.SERVING_TEMPERATURE = 0  # greedy: the answers are reproducible
    settings.SERVING_LIVE_CHECK_SECONDS = 0
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["127.0.0.1"]  # the fake servers below
    serving.reset()
    yield
    serving.reset()
    # Serving queries from asgiref's worker thread; its connection would outlive the test database.
    await sync_to_async(connections.close_all)()


def register_live(folder: Path, **kwargs: Any) -> ModelVersion:
    version = model_version_register(kind="policy", artifact_path=str(folder), checksums=sha256_tree(folder), **kwargs)
    return model_version_make_live(version=version)


def register_openai_live(base_url: str) -> ModelVersion:
    version = model_version_register(
        kind="policy", artifact_path="", checksums={}, backend="openai", base_url=base_url, model_name="tiny-chat"
    )
    return model_version_make_live(version=version)


def generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(GENERATE_THREAD)]


async def wait_for_no_generation_thread(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while generation_threads():
        assert time.monotonic() < deadline, "the generation thread is still running"
        await asyncio.sleep(0.01)


def load_failures(label: str) -> float:
    return REGISTRY.get_sample_value("rlhf_model_load_failures_total", {"model_version": label}) or 0.0


@pytest.fixture
def slow_model(monkeypatch):
    """Makes each forward pass of a loaded local model take 20 ms, so a consumer can leave mid-answer."""
    calls: list[int] = []

    def install(policy: Any) -> list[int]:
        forward = policy.model.forward

        def slow_forward(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            time.sleep(0.02)
            return forward(*args, **kwargs)

        monkeypatch.setattr(policy.model, "forward", slow_forward)
        return calls

    return install


# --- The local backend -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_the_live_bootstrapped_policy_streams_a_numbered_answer(bootstrapped):
    version = await sync_to_async(register_live)(bootstrapped.policy_dir)

    policy = await get_policy()
    chunks = [chunk async for chunk in policy.stream(QUESTION)]

    assert (policy.version_id, policy.label) == (version.id, "policy:1")
    assert len(chunks) > 5, "streamed token by token"
    text = "".join(chunks)
    assert re.search(r"^1\. \S", text, re.MULTILINE), text
    assert "<|im_end|>" not in text
    assert "<|im_start|>" not in text
    assert await get_policy() is policy, "loaded once, shared"
    sample = REGISTRY.get_sample_value("rlhf_serving_live_version", {"kind": "policy"})
    assert sample == 1


@pytest.mark.django_db(transaction=True)
async def test_max_new_tokens_bounds_the_answer(bootstrapped):
    await sync_to_async(register_live)(bootstrapped.policy_dir)
    policy = await get_policy()

    short = [chunk async for chunk in policy.stream(QUESTION, max_new_tokens=3)]

    assert 1 <= len(short) <= 3


@pytest.mark.django_db(transaction=True)
async def test_closing_the_stream_stops_generation_and_ends_the_thread(bootstrapped, slow_model, caplog):
    await sync_to_async(register_live)(bootstrapped.policy_dir)
    policy = await get_policy()
    forward_calls = slow_model(policy)

    stream = policy.stream(QUESTION, max_new_tokens=200)
    first = await anext(stream)
    assert first
    assert len(generation_threads()) == 1
    await stream.aclose()

    await wait_for_no_generation_thread()
    assert len(forward_calls) < 20, "stopped within a token or two of the close, not after 200"
    assert "policy:1 stopped generating: the consumer left" in caplog.text


@pytest.mark.django_db(transaction=True)
async def test_cancelling_the_consuming_task_stops_generation(bootstrapped, slow_model):
    await sync_to_async(register_live)(bootstrapped.policy_dir)
    policy = await get_policy()
    forward_calls = slow_model(policy)
    started = asyncio.Event()

    async def consume() -> None:
        async for _chunk in policy.stream(QUESTION, max_new_tokens=200):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await wait_for_no_generation_thread()
    assert len(forward_calls) < 20


@pytest.mark.django_db(transaction=True)
async def test_a_model_that_stalls_is_a_serving_error_and_stops(bootstrapped, slow_model, settings, monkeypatch):
    await sync_to_async(register_live)(bootstrapped.policy_dir)
    policy = await get_policy()
    forward_calls = slow_model(policy)  # 20 ms a token: the first ones come in time
    settings.SERVING_TOKEN_TIMEOUT_SECONDS = 0.5
    stream = policy.stream(QUESTION, max_new_tokens=200)
    assert await anext(stream)
    stalled = policy.model.forward

    def stall(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)  # past the timeout: the first stalled token already is
        return stalled(*args, **kwargs)

    monkeypatch.setattr(policy.model, "forward", stall)
    with pytest.raises(ServingError) as caught:
        async for _chunk in stream:
            pass
    assert caught.value.code == "generation_timeout"
    await wait_for_no_generation_thread()
    assert len(forward_calls) < 40, "stopped, not run on to 200 tokens"


@pytest.mark.django_db(transaction=True)
async def test_generations_beyond_the_limit_wait_their_turn(bootstrapped, slow_model, settings):
    settings.SERVING_MAX_CONCURRENT = 1
    await sync_to_async(register_live)(bootstrapped.policy_dir)
    policy = await get_policy()
    slow_model(policy)
    spans: dict[str, list[float]] = {}

    async def consume(name: str) -> None:
        async for _chunk in policy.stream(QUESTION, max_new_tokens=5):
            spans.setdefault(name, []).append(time.monotonic())
            assert len(generation_threads()) <= 1

    await asyncio.gather(consume("first"), consume("second"))

    assert spans["first"][-1] < spans["second"][0], "the second answer starts after the first one ends"


@pytest.mark.django_db(transaction=True)
async def test_a_bad_conversation_is_refused(bootstrapped):
    await sync_to_async(register_live)(bootstrapped.policy_dir)
    policy = await get_policy()

    for messages in ([], [{"role": "wizard", "content": "hi"}], [{"role": "user"}]):
        with pytest.raises(ServingError) as caught:
            [chunk async for chunk in policy.stream(messages)]
        assert caught.value.code == "invalid_messages"


@pytest.mark.django_db(transaction=True)
async def test_a_tampered_artifact_is_not_served_and_the_reason_is_recorded(bootstrapped, tmp_path):
    folder = tmp_path / "policy"
    shutil.copytree(bootstrapped.policy_dir, folder)
    version = await sync_to_async(register_live)(folder)
    weights = folder / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes() + b"\x00")
    failures = load_failures("policy:1")

    with pytest.raises(ServingError) as caught:
        await get_policy()

    assert caught.value.code == "model_load_failed"
    assert caught.value.message == "The assistant's model could not be loaded. Operators have been notified."
    await sync_to_async(version.refresh_from_db)()
    assert version.load_error == (
        f"Artifact {folder} does not match its recorded checksums (changed: model.safetensors)."
    )
    assert load_failures("policy:1") == failures + 1
    with pytest.raises(ServingError):
        await get_policy()
    assert load_failures("policy:1") == failures + 1, "not retried until it is deployed again"


@pytest.mark.django_db(transaction=True)
async def test_no_live_policy_is_a_clear_serving_error():
    with pytest.raises(ServingError) as caught:
        await get_policy()
    assert caught.value.code == "no_live_policy"
    assert caught.value.message == "No policy model is live yet; an operator must deploy one."


# --- Hot swap ----------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_deploy_is_served_without_a_restart_and_a_broken_one_is_not(bootstrapped, tmp_path):
    await sync_to_async(register_live)(bootstrapped.policy_dir)
    assert (await get_policy()).label == "policy:1"

    second = await sync_to_async(register_live)(bootstrapped.policy_dir)
    policy = await get_policy()
    assert (policy.version_id, policy.label) == (second.id, "policy:2")
    assert "".join([chunk async for chunk in policy.stream(QUESTION)])

    broken_folder = tmp_path / "broken"
    broken_folder.mkdir()
    (broken_folder / "config.json").write_text('{"model_type": "gpt2"')  # cut short
    third = await sync_to_async(register_live)(broken_folder)

    policy = await get_policy()
    assert policy.label == "policy:2", "still serving the last good version"
    await sync_to_async(third.refresh_from_db)()
    assert third.status == "live"
    assert f"{broken_folder} is not a loadable causal LM" in third.load_error
    assert load_failures("policy:3") >= 1
    assert REGISTRY.get_sample_value("rlhf_serving_live_version", {"kind": "policy"}) == 2


@pytest.mark.django_db(transaction=True)
async def test_requests_keep_the_current_policy_while_a_new_version_loads(bootstrapped, monkeypatch):
    from models_registry.serving import live

    await sync_to_async(register_live)(bootstrapped.policy_dir)
    assert (await get_policy()).label == "policy:1"
    await sync_to_async(register_live)(bootstrapped.policy_dir)
    started, release = threading.Event(), threading.Event()
    load_policy = live.load_policy

    def slow_load(version: ModelVersion) -> Any:
        started.set()
        release.wait(10)
        return load_policy(version)

    monkeypatch.setattr(live, "load_policy", slow_load)
    loading = asyncio.create_task(get_policy())
    while not started.is_set():
        await asyncio.sleep(0.01)

    assert (await get_policy()).label == "policy:1", "not blocked by the load"
    release.set()
    assert (await loading).label == "policy:2"
    assert (await get_policy()).label == "policy:2"


@pytest.mark.django_db(transaction=True)
async def test_the_live_version_is_checked_at_most_every_interval(bootstrapped, settings, monkeypatch):
    from models_registry.serving import live

    settings.SERVING_LIVE_CHECK_SECONDS = 30
    now = [1000.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: now[0])
    await sync_to_async(register_live)(bootstrapped.policy_dir)
    assert (await get_policy()).label == "policy:1"
    await sync_to_async(register_live)(bootstrapped.policy_dir)

    now[0] += 29
    assert (await get_policy()).label == "policy:1", "no database query inside the interval"
    now[0] += 2
    assert (await get_policy()).label == "policy:2"


@pytest.mark.django_db(transaction=True)
async def test_redeploying_a_fixed_version_loads_it_again(bootstrapped, tmp_path):
    folder = tmp_path / "policy"
    shutil.copytree(bootstrapped.policy_dir, folder)
    good = await sync_to_async(register_live)(bootstrapped.policy_dir)
    fixed_later = await sync_to_async(register_live)(folder)
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    weights.chmod(0o644)
    weights.write_bytes(b"garbage")
    # Loaded first while good is live, so the broken one falls back to it.
    await sync_to_async(model_version_make_live)(version=good)
    assert (await get_policy()).label == "policy:1"
    await sync_to_async(model_version_make_live)(version=fixed_later)
    assert (await get_policy()).label == "policy:1"

    weights.write_bytes(original)
    await sync_to_async(model_version_make_live)(version=good)
    await sync_to_async(model_version_make_live)(version=fixed_later)

    assert (await get_policy()).label == "policy:2"
    await sync_to_async(fixed_later.refresh_from_db)()
    assert fixed_later.load_error == "", "cleared once it loads"


# --- The openai backend ------------------------------------------------------------------------------


class FakeOpenAI:
    """A minimal OpenAI-compatible server on loopback: real HTTP/1.1, a chunked SSE body."""

    def __init__(self, *, pieces: list[str] | None = None, status: int = 200, delay: float = 0.01) -> None:
        self.pieces = pieces if pieces is not None else ["1. ", "Boil", " water.", "\n2. ", "Add", " the egg."]
        self.status = status
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None
        self.disconnected = asyncio.Event()

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> FakeOpenAI:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            request_line, *header_lines = head.strip().split("\r\n")
            headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in header_lines)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append({"line": request_line, "headers": headers, "json": json.loads(body)})
            if self.status != 200:
                error = json.dumps({"error": {"message": "model crashed"}}).encode()
                writer.write(
                    f"HTTP/1.1 {self.status} Oops\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(error)}\r\nConnection: close\r\n\r\n".encode()
                    + error
                )
                await writer.drain()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )
            events = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
            events += [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in self.pieces]
            events += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
            for event in [*(json.dumps(e) for e in events), "[DONE]"]:
                data = f"data: {event}\n\n".encode()
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                await writer.drain()
                await asyncio.sleep(self.delay)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnected.set()
        finally:
            writer.close()


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [chunk async for chunk in stream]


@pytest.mark.django_db(transaction=True)
async def test_the_openai_backend_streams_the_servers_chunks_in_order(settings):
    settings.SERVING_OPENAI_API_KEY = "sk-test"
    async with FakeOpenAI() as server:
        await sync_to_async(register_openai_live)(server.url)
        policy = await get_policy()

        chunks = await collect(policy.stream(QUESTION, max_new_tokens=50))

    assert chunks == ["1. ", "Boil", " water.", "\n2. ", "Add", " the egg."]
    assert policy.label == "policy:1"
    (request,) = server.requests
    assert request["line"] == "POST /v1/chat/completions HTTP/1.1"
    assert request["headers"]["authorization"] == "Bearer sk-test"
    assert request["json"]["model"] == "tiny-chat"
    assert request["json"]["messages"] == QUESTION
    assert request["json"]["stream"] is True
    assert request["json"]["max_tokens"] == 50


@pytest.mark.django_db(transaction=True)
async def test_a_base_url_ending_in_v1_is_not_doubled():
    async with FakeOpenAI(pieces=["ok"]) as server:
        await sync_to_async(register_openai_live)(server.url + "/v1/")
        chunks = await collect((await get_policy()).stream(QUESTION))
    assert chunks == ["ok"]
    assert server.requests[0]["line"].startswith("POST /v1/chat/completions ")


@pytest.mark.django_db(transaction=True)
async def test_an_openai_server_error_is_a_serving_error():
    async with FakeOpenAI(status=500) as server:
        await sync_to_async(register_openai_live)(server.url)
        policy = await get_policy()
        with pytest.raises(ServingError) as caught:
            await collect(policy.stream(QUESTION))
    assert caught.value.code == "model_server_error"
    assert caught.value.message == "The model server answered HTTP 500."


@pytest.mark.django_db(transaction=True)
async def test_an_unreachable_openai_server_is_a_serving_error():
    port = free_port()  # free a moment ago: nothing listens there
    await sync_to_async(register_openai_live)(f"http://127.0.0.1:{port}")
    policy = await get_policy()

    with pytest.raises(ServingError) as caught:
        await collect(policy.stream(QUESTION))

    assert caught.value.code == "model_server_unreachable"
    assert caught.value.message == "The model server cannot be reached."


@pytest.mark.django_db(transaction=True)
async def test_closing_an_openai_stream_closes_the_connection():
    async with FakeOpenAI(pieces=[f"piece {i} " for i in range(200)], delay=0.005) as server:
        await sync_to_async(register_openai_live)(server.url)
        stream = (await get_policy()).stream(QUESTION)
        assert await anext(stream) == "piece 0 "
        await stream.aclose()
        await asyncio.wait_for(server.disconnected.wait(), 5)
    assert len(server.requests) == 1


@pytest.mark.django_db(transaction=True)
async def test_a_version_on_a_host_off_the_allow_list_is_never_loaded_nor_sent_anything(settings):
    settings.SERVING_OPENAI_API_KEY = "sk-secret"
    async with FakeOpenAI() as server:
        # As a version registered before the allow-list changed (registration itself refuses the host).
        settings.SERVING_OPENAI_ALLOWED_HOSTS = ["127.0.0.1"]
        version = await sync_to_async(register_openai_live)(server.url)
        settings.SERVING_OPENAI_ALLOWED_HOSTS = ["models.internal"]

        with pytest.raises(ServingError) as caught:
            await get_policy()

        await sync_to_async(version.refresh_from_db)()
    assert caught.value.code == "model_load_failed"
    assert server.requests == []
    assert "is not on SERVING_OPENAI_ALLOWED_HOSTS" in version.load_error


@pytest.mark.django_db(transaction=True)
async def test_the_api_key_is_not_sent_once_the_host_leaves_the_allow_list(settings):
    settings.SERVING_OPENAI_API_KEY = "sk-secret"
    async with FakeOpenAI() as server:
        await sync_to_async(register_openai_live)(server.url)
        policy = await get_policy()
        settings.SERVING_OPENAI_ALLOWED_HOSTS = []

        with pytest.raises(ServingError) as caught:
            await collect(policy.stream(QUESTION))

    assert caught.value.code == "host_not_allowed"
    assert server.requests == []
