"""The loop across real processes sharing PostgreSQL: a canary's arms stick to their conversations
whichever server process answers, and a worker's monitor pass rolls a worse deploy back, after which a
chat in a separate server process answers with the previous version (and the webhooks are signed)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from kombu import Connection

from feedback.arms import draw
from feedback.models import Conversation, Message
from models_registry.models import ModelVersion
from models_registry.services import (
    canary_start,
    model_version_approve,
    model_version_deploy,
    model_version_make_live,
    model_version_register,
)
from rlhf_site.celery import app
from tests.e2e.servers import chat, fake_model_server, platform_server, session_of
from tests.factories import ConversationFactory
from tests.helpers import start_worker, wait_until
from tests.monitoring_data import rate
from tests.test_webhooks import Receiver

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
SERVING = {"SERVING_OPENAI_ALLOWED_HOSTS": "127.0.0.1", "SERVING_LIVE_CHECK_SECONDS": "1", "DEBUG": "1"}


def openai_version(url: str) -> ModelVersion:
    return model_version_register(
        kind="policy", artifact_path="", checksums={}, backend="openai", base_url=url, model_name="fake"
    )


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.REGISTRY_FOUR_EYES = False


def test_canary_arms_stick_to_conversations_across_two_server_processes(alice, tmp_path):
    with (
        fake_model_server("1. From the live version.") as live_url,
        fake_model_server("1. From the canary.") as canary_url,
    ):
        live = model_version_make_live(version=openai_version(live_url))
        candidate = model_version_approve(version_id=openai_version(canary_url).pk, actor=None)
        canary = canary_start(version_id=candidate.pk, share=0.5, actor=None)
        conversations: dict[str, list[Conversation]] = {"live": [], "canary": []}
        while min(len(c) for c in conversations.values()) < 3:
            conversation = ConversationFactory(user=alice)
            arm = draw(canary, conversation.id)
            if len(conversations[arm]) < 3:
                conversations[arm].append(conversation)
            else:
                conversation.delete()
        session = session_of(alice)

        with platform_server(tmp_path, "a", **SERVING) as a, platform_server(tmp_path, "b", **SERVING) as b:
            for arm, group in conversations.items():
                for conversation in group:
                    first = chat(a, session, conversation.id, "Hello from server a")
                    second = chat(b, session, conversation.id, "And from server b")
                    expected = "From the canary." if arm == "canary" else "From the live version."
                    assert expected in first, (arm, first[-300:])
                    assert expected in second, (arm, second[-300:])

    for arm, group in conversations.items():
        version = candidate if arm == "canary" else live
        for conversation in group:
            conversation.refresh_from_db()
            assert (conversation.canary_id, conversation.arm) == (canary.pk, arm)
            answers = Message.objects.filter(conversation=conversation, role="assistant")
            assert list(answers.values_list("model_version_id", flat=True)) == [version.pk, version.pk]


@pytest.mark.redis
def test_a_workers_monitor_pass_rolls_back_and_another_server_then_answers_with_the_previous_version(
    alice, tmp_path, settings
):
    receiver = Receiver()
    secret = "e2e-webhook-secret"
    try:
        with (
            fake_model_server("1. The previous version answers.") as old_url,
            fake_model_server("1. The new version answers.") as new_url,
        ):
            previous = model_version_make_live(version=openai_version(old_url))
            rate(previous, 300, 0.75)
            new = model_version_approve(version_id=openai_version(new_url).pk, actor=None)
            model_version_deploy(version_id=new.pk, actor=None, reason="looked better offline")
            rate(new, 300, 0.45)
            conversation = ConversationFactory(user=alice)
            session = session_of(alice)
            env = {**SERVING, "REGISTRY_WEBHOOK_URLS": receiver.url, "REGISTRY_WEBHOOK_SECRET": secret}

            with platform_server(tmp_path, "chat", **env) as server:
                assert "The new version answers." in chat(server, session, conversation.id, "Before")
                worker = start_worker(
                    "default", {"REDIS_URL": settings.REDIS_URL, **env}, tmp_path / "worker.log", cwd=tmp_path
                )
                try:
                    with Connection(settings.REDIS_URL) as broker:
                        app.send_task("training.tasks.monitor_versions", connection=broker, queue="default")
                    rolled_back = wait_until(
                        lambda: ModelVersion.objects.get(pk=previous.pk).status == "live", timeout=90
                    )
                    assert rolled_back, (tmp_path / "worker.log").read_text()[-3000:]
                    # The server swaps within SERVING_LIVE_CHECK_SECONDS, without a restart.
                    assert wait_until(
                        lambda: "The previous version answers." in chat(server, session, conversation.id, "After"),
                        timeout=30,
                        interval=1,
                    )
                    assert wait_until(lambda: len(receiver.deliveries) >= 3, timeout=60)
                finally:
                    worker.terminate()
                    worker.wait(timeout=30)
    finally:
        receiver.close()

    new.refresh_from_db()
    assert new.status == "retired"
    last = Message.objects.filter(conversation=conversation, role="assistant").order_by("-created_at").first()
    assert last.model_version_id == previous.pk
    bodies = [json.loads(d["body"]) for d in receiver.deliveries]
    assert {b["type"] for b in bodies} == {"monitor_decision", "deployment_event"}
    assert any(b["type"] == "monitor_decision" and b["data"]["decision"] == "rollback" for b in bodies)
    for delivery in receiver.deliveries:
        expected = "sha256=" + hmac.new(secret.encode(), delivery["body"], hashlib.sha256).hexdigest()
        assert delivery["headers"]["X-RLHF-Signature"] == expected
