"""Two server processes against one PostgreSQL and Redis, as ``WEB_WORKERS=2 bin/run`` runs them: /metrics
adds up the counters of both (prometheus_client's multiprocess mode, one PROMETHEUS_MULTIPROC_DIR), the
API throttle is one budget across both, and a deploy is served by both. The servers start once for the
module."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from django.conf import settings
from django.core.cache import cache
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.authtoken.models import Token

from core.processes import serve_platform
from feedback.models import Feedback, Message
from models_registry.models import ModelVersion
from models_registry.services import (
    model_version_approve,
    model_version_deploy,
    model_version_make_live,
    model_version_register,
)
from tests.conftest import IN_CI, _postgres_problem, _redis_problem
from tests.e2e.servers import chat, fake_model_server, session_of
from tests.factories import AssistantMessageFactory, ConversationFactory, UserFactory
from tests.helpers import child_env, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

THROTTLE_PER_MINUTE = 6
METRICS_TOKEN = "e2e-metrics-token-0123456789abcdef"


@pytest.fixture(scope="module")
def servers(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[tuple[str, str]]:
    with django_db_blocker.unblock():
        problem = _postgres_problem() or _redis_problem()
    if problem:
        (pytest.fail if IN_CI else pytest.skip)(f"two server processes need PostgreSQL and Redis: {problem}")
    tmp = tmp_path_factory.mktemp("many-processes")
    metrics_dir = tmp / "prometheus"
    metrics_dir.mkdir()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "REDIS_URL": settings.REDIS_URL,
        "API_THROTTLE_RATE": f"{THROTTLE_PER_MINUTE}/min",
        "METRICS_TOKEN": METRICS_TOKEN,
        "SERVING_OPENAI_ALLOWED_HOSTS": "127.0.0.1",
        "SERVING_LIVE_CHECK_SECONDS": "1",
        "DEBUG": "1",
    }
    with django_db_blocker.unblock(), ExitStack() as stack:
        bases = tuple(
            stack.enter_context(
                serve_platform(tmp / f"{name}.log", env=child_env(VAR_DIR=str(tmp / f"var-{name}"), **env))
            )
            for name in ("a", "b")
        )
        yield bases[0], bases[1]


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.REGISTRY_FOUR_EYES = False


def openai_version(url: str) -> ModelVersion:
    return model_version_register(
        kind="policy", artifact_path="", checksums={}, backend="openai", base_url=url, model_name="fake"
    )


def metric_samples(base: str, name: str) -> list[tuple[dict[str, str], float]]:
    response = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text[:500]
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name
    ]


def feedback_count(base: str) -> float:
    return sum(value for _, value in metric_samples(base, "rlhf_feedback_total"))


def test_metrics_add_up_the_counters_of_both_processes(servers, alice):
    a, b = servers
    token = Token.objects.create(user=alice).key
    conversation = ConversationFactory(user=alice)
    answers = [AssistantMessageFactory(conversation=conversation) for _ in range(5)]
    before = (feedback_count(a), feedback_count(b))
    assert before[0] == before[1]

    for answer, base in zip(answers, [a, a, a, b, b], strict=True):
        response = httpx.post(
            f"{base}/api/assistant/feedback",
            json={"message_id": str(answer.id), "thumbs": "up"},
            headers={"Authorization": f"Token {token}"},
            timeout=30,
        )
        assert response.status_code == 201, response.text

    assert Feedback.objects.filter(user=alice, thumbs="up").count() == 5
    # Three counted in a, two in b: either process's /metrics shows all five.
    assert feedback_count(a) == before[0] + 5
    assert feedback_count(b) == before[1] + 5


def test_the_api_throttle_is_one_budget_across_both_processes(servers):
    a, b = servers
    bob = UserFactory(username="bob")
    headers = {"Authorization": f"Token {Token.objects.create(user=bob).key}"}

    statuses = [
        httpx.get(f"{base}/api/assistant/conversations", headers=headers, timeout=30).status_code
        for base in [a, b] * (THROTTLE_PER_MINUTE // 2)
    ]
    assert statuses == [200] * THROTTLE_PER_MINUTE
    # Each process has served only half the budget, yet both refuse: the count lives in Redis.
    for base in (a, b):
        refused = httpx.get(f"{base}/api/assistant/conversations", headers=headers, timeout=30)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "throttled"
    window = int(time.time() // 60)  # counted per minute (core.ratelimit.hit), refusals taken back
    keys = [f"ratelimit:throttle_user_{bob.pk}:{w}" for w in (window - 1, window)]
    assert sum(int(cache.get(key, 0)) for key in keys) == THROTTLE_PER_MINUTE


def test_a_server_process_keeps_its_redis_connections_across_requests(servers):
    """Each request used to get its own cache instance, with its own pool and a new TCP connection to
    Redis (core.cache.RedisCache): 18 throttled requests, over the two processes, now open at most a
    few connections, not 18."""
    import redis

    users = [UserFactory(username=f"conn{i}") for i in range(3)]
    tokens = [Token.objects.create(user=user).key for user in users]
    client = redis.Redis.from_url(settings.REDIS_URL)
    opened_before = client.info("stats")["total_connections_received"]
    statuses = [
        httpx.get(f"{base}/api/assistant/conversations", headers={"Authorization": f"Token {token}"}, timeout=30)
        for token in tokens
        for base in (servers[0], servers[1], servers[0])
        for _ in range(2)
    ]
    opened = client.info("stats")["total_connections_received"] - opened_before
    assert [response.status_code for response in statuses] == [200] * 18
    assert opened <= 4, f"{opened} new Redis connections for 18 requests"


def test_a_deploy_is_served_by_both_processes(servers, alice):
    a, b = servers
    conversation = ConversationFactory(user=alice)
    session = session_of(alice)
    with fake_model_server("1. The old version.") as old_url, fake_model_server("1. The new version.") as new_url:
        old = model_version_make_live(version=openai_version(old_url))
        for base in (a, b):
            assert wait_until(lambda base=base: "The old version." in chat(base, session, conversation.id, "Hi"), 30, 1)

        new = model_version_approve(version_id=openai_version(new_url).pk, actor=None)
        model_version_deploy(version_id=new.pk, actor=None, reason="better")
        # Each process notices within SERVING_LIVE_CHECK_SECONDS, without a restart.
        for base in (a, b):
            assert wait_until(lambda base=base: "The new version." in chat(base, session, conversation.id, "Hi"), 30, 1)

    answers = Message.objects.filter(conversation=conversation, role="assistant").order_by("created_at")
    assert answers.first().model_version_id == old.pk
    assert answers.last().model_version_id == new.pk
    # One series per process (multiprocess_mode="liveall"): both serve the new version now.
    served = metric_samples(a, "rlhf_serving_live_version")
    assert len({labels["pid"] for labels, _ in served}) == 2
    assert {value for labels, value in served if labels["kind"] == "policy"} == {new.number}
