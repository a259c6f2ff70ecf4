"""A server process warms up before its first connection (``rlhf_site.lifespan``): the chat's
templates compiled, the live policy loaded and warmed, and nothing that goes wrong stops it from
starting."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import DatabaseError, connections
from django.template import engines
from django.template.loaders.cached import Loader as CachedLoader

from feedback.consumers import fragments_compile
from models_registry import serving
from models_registry.models import ModelVersion
from models_registry.serving import live, openai_compat
from rlhf_site.lifespan import lifespan
from tests.test_serving import register_openai_live

UNREACHABLE = "http://127.0.0.1:9"  # loading an OpenAI-compatible version does not connect


@pytest.fixture(autouse=True)
async def _fresh_serving(settings):
    settings.SERVING_LIVE_CHECK_SECONDS = 60
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEB_WARM_UP_SECONDS = 30
    serving.reset()
    yield
    serving.reset()
    await sync_to_async(connections.close_all)()


async def start_and_stop() -> list[str]:
    """Drive the lifespan as uvicorn does: startup, then shutdown; the messages it sent back."""
    incoming: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    incoming.put_nowait({"type": "lifespan.startup"})
    incoming.put_nowait({"type": "lifespan.shutdown"})
    sent: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await asyncio.wait_for(lifespan({"type": "lifespan"}, incoming.get, send), timeout=60)
    return sent


@pytest.mark.django_db(transaction=True)
async def test_startup_loads_and_warms_the_live_policy_before_the_first_chat():
    await sync_to_async(register_openai_live)(UNREACHABLE)
    assert serving.served_policy() is None

    assert await start_and_stop() == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

    policy = serving.served_policy()
    assert policy is not None
    assert policy.label == "policy:1"
    assert asyncio.get_running_loop() in openai_compat._clients  # the loop's HTTP client is built
    assert await serving.get_policy() is policy  # the first chat finds it loaded


@pytest.mark.django_db(transaction=True)
async def test_no_warm_up_when_the_setting_is_zero(settings):
    settings.WEB_WARM_UP_SECONDS = 0
    await sync_to_async(register_openai_live)(UNREACHABLE)

    assert await start_and_stop() == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert serving.served_policy() is None


@pytest.mark.django_db(transaction=True)
async def test_the_process_starts_with_no_live_policy_or_the_registry_away(monkeypatch):
    assert await start_and_stop() == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert serving.served_policy() is None

    await sync_to_async(register_openai_live)(UNREACHABLE)

    def away(kind: str) -> Any:
        raise DatabaseError("connection refused")

    monkeypatch.setattr(live.selectors, "live_version_key", away)
    assert await start_and_stop() == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert serving.served_policy() is None
    monkeypatch.undo()
    assert (await serving.get_policy()).label == "policy:1"  # the first chat loads it


@pytest.mark.django_db(transaction=True)
async def test_a_load_longer_than_the_warm_up_goes_on_while_the_process_starts(settings, monkeypatch):
    settings.WEB_WARM_UP_SECONDS = 0.2
    await sync_to_async(register_openai_live)(UNREACHABLE)
    release = threading.Event()
    load_policy = live.load_policy

    def slow_load(version: ModelVersion) -> Any:
        release.wait(20)
        return load_policy(version)

    monkeypatch.setattr(live, "load_policy", slow_load)
    began = time.monotonic()
    assert await start_and_stop() == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert time.monotonic() - began < 10  # not held by the load
    assert serving.served_policy() is None

    release.set()
    assert (await serving.get_policy()).label == "policy:1"


@pytest.mark.django_db(transaction=True)
async def test_a_warm_up_that_fails_keeps_the_loaded_policy(monkeypatch, caplog):
    await sync_to_async(register_openai_live)(UNREACHABLE)

    async def broken(self: Any) -> None:
        raise RuntimeError("the warm-up request failed")

    monkeypatch.setattr(openai_compat.OpenAIPolicy, "warm", broken)
    policy = await live.preload(timeout=30)

    assert policy is not None
    assert serving.served_policy() is policy  # loaded: the first chat uses it
    assert "policy:1 is loaded but warming it failed" in caplog.text
    assert "preloading the live policy failed" not in caplog.text


@pytest.mark.django_db(transaction=True)
async def test_a_timeout_inside_the_load_is_a_failure_not_the_warm_ups_own(monkeypatch, caplog):
    await sync_to_async(register_openai_live)(UNREACHABLE)

    def timed_out(kind: str) -> Any:
        raise TimeoutError("timed out")  # a socket's timeout, not a DatabaseError

    monkeypatch.setattr(live.selectors, "live_version_key", timed_out)
    assert await live.preload(timeout=30) is None

    assert "preloading the live policy failed" in caplog.text
    assert "still loading" not in caplog.text


def start_openai_canary(base_url: str) -> ModelVersion:
    from models_registry.services import canary_start, model_version_approve, model_version_register

    candidate = model_version_register(
        kind="policy", artifact_path="", checksums={}, backend="openai", base_url=base_url, model_name="tiny-chat-2"
    )
    model_version_approve(version_id=candidate.id, actor=None)
    canary_start(version_id=candidate.id, share=0.5, actor=None)
    return candidate


@pytest.mark.django_db(transaction=True)
async def test_startup_also_loads_a_running_canarys_version(monkeypatch):
    await sync_to_async(register_openai_live)(UNREACHABLE)
    candidate = await sync_to_async(start_openai_canary)(UNREACHABLE)
    loaded: list[str] = []
    load_policy = live.load_policy

    def counted(version: ModelVersion) -> Any:
        loaded.append(version.label)
        return load_policy(version)

    monkeypatch.setattr(live, "load_policy", counted)
    assert await start_and_stop() == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

    assert loaded == ["policy:1", candidate.label]  # the canary's arm too, not on its first answer
    assert (await live.get_policy_for(candidate.id)).label == candidate.label
    assert loaded == ["policy:1", candidate.label]  # found loaded


@pytest.mark.django_db(transaction=True)
async def test_a_canary_that_cannot_load_does_not_stop_the_live_policys_warm_up(monkeypatch, caplog):
    await sync_to_async(register_openai_live)(UNREACHABLE)
    candidate = await sync_to_async(start_openai_canary)(UNREACHABLE)
    load_policy = live.load_policy

    def canary_broken(version: ModelVersion) -> Any:
        if version.id == candidate.id:
            raise OSError("the canary's weights are missing")
        return load_policy(version)

    monkeypatch.setattr(live, "load_policy", canary_broken)
    policy = await live.preload(timeout=30)

    assert policy is not None
    assert policy.label == "policy:1"
    assert serving.served_policy() is policy
    assert "the canary's version was not preloaded" in caplog.text
    await sync_to_async(candidate.refresh_from_db)()
    assert "the canary's weights are missing" in candidate.load_error  # stored for the operators


def test_the_chats_fragments_are_compiled_into_the_template_cache():
    (loader,) = engines["django"].engine.template_loaders
    assert isinstance(loader, CachedLoader)  # Django's default loaders
    loader.reset()

    names = fragments_compile()

    assert {"chat/_token.html", "chat/_answer_final.html", "chat/_step.html", "chat/_turn_new.html"} <= set(names)
    assert "chat/page.html" not in names  # the page is rendered by a view, not over the socket
    assert set(names) <= set(loader.get_template_cache)


def test_a_started_server_is_given_its_warm_up_and_a_minute_more_to_answer(settings):
    from core.processes import start_limit

    settings.WEB_WARM_UP_SECONDS = 5  # this process's: not the child's, whose environment is its own
    assert start_limit({}) == 120  # the default warm-up; the limit was 60, the warm-up's own cap
    assert start_limit({"WEB_WARM_UP_SECONDS": "5"}) == 65
