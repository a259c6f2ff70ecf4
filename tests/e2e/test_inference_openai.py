"""The official ``openai`` client (sync, streaming, async) against the platform as deployed (uvicorn),
serving the bootstrapped policy: answers are stored as the web chat stores them, and their ids are
rated through the REST API. A client that drops a stream, or gives up waiting for a whole answer,
leaves it stored as ``stopped``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from feedback.models import Feedback, Message
from models_registry.artifacts import sha256_tree
from models_registry.services import model_version_make_live, model_version_register
from tests.e2e.servers import fake_model_server, platform_server
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "How do I make tea?"}]


@pytest.fixture
def live_policy(bootstrapped):
    version = model_version_register(
        kind="policy", artifact_path=str(bootstrapped.policy_dir), checksums=sha256_tree(bootstrapped.policy_dir)
    )
    return model_version_make_live(version=version)


@pytest.fixture
def server(tmp_path, live_policy):
    with platform_server(tmp_path, "server", SERVING_MAX_NEW_TOKENS="60", SERVING_TEMPERATURE="0") as base:
        yield base


@pytest.fixture
def key(db):
    return Token.objects.create(user=get_user_model().objects.create_user(username="dana")).key


def stored(answer_id: str) -> Message:
    return Message.objects.select_related("model_version", "parent").get(id=answer_id)


def test_openai_clients_get_answers_stored_like_the_chats_and_rate_them_by_id(server, key):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=key, max_retries=0)
    assert [m.id for m in client.models.list()] == ["policy", "policy:1"]

    completion = client.chat.completions.create(model="policy", messages=QUESTION, max_tokens=40)
    answer = stored(completion.id)
    assert completion.model == "policy:1"
    assert completion.choices[0].message.content == answer.content != ""
    assert completion.choices[0].finish_reason in {"stop", "length"}
    assert (answer.status, answer.model_version.label, answer.parent.content) == (
        "complete",
        "policy:1",
        "How do I make tea?",
    )
    assert completion.usage.completion_tokens == answer.token_count > 0
    assert completion.usage.prompt_tokens > 5  # the chat template's tokens and the question's
    assert answer.steps.count() >= 1

    stream = client.chat.completions.create(
        model="policy",
        messages=[{"role": "user", "content": "And coffee?"}],
        stream=True,
        stream_options={"include_usage": True},
        metadata={"conversation_id": completion.conversation_id},
    )
    chunks = list(stream)
    streamed = stored(chunks[0].id)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == streamed.content
    assert chunks[-1].usage.completion_tokens == streamed.token_count
    assert str(streamed.conversation_id) == completion.conversation_id

    async def ask_async() -> str:
        async with openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=key, max_retries=0) as aclient:
            result = await aclient.chat.completions.create(model="policy:1", messages=QUESTION, max_tokens=20)
            return result.id

    async_answer = stored(asyncio.run(ask_async()))
    assert async_answer.status == "complete"

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert (missing.value.code, missing.value.param) == ("model_not_found", "model")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="policy", messages=QUESTION, n=2)
    assert bad.value.param == "n"

    rated = httpx.post(
        f"{server}/api/assistant/feedback",
        json={"message_id": completion.id, "thumbs": "up", "comment": "Good tea."},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert rated.status_code == 201, rated.text
    feedback = Feedback.objects.get(message_id=completion.id)
    assert (feedback.thumbs, feedback.comment, feedback.model_version.label) == ("up", "Good tea.", "policy:1")


@contextmanager
def platform_on_a_slow_model(tmp_path, words: int = 100) -> Iterator[str]:
    """The platform (uvicorn) whose live policy streams ``words`` words, 0.1 s apart: an answer that is
    still streaming when the client goes."""
    with fake_model_server(pieces=[f"word{n} " for n in range(words)], pause=0.1) as model_url:
        version = model_version_register(
            kind="policy", artifact_path="", checksums={}, backend="openai", base_url=model_url, model_name="slow"
        )
        model_version_make_live(version=version)
        with platform_server(tmp_path, "server", SERVING_OPENAI_ALLOWED_HOSTS="127.0.0.1") as base:
            yield base


def test_a_client_that_drops_the_stream_leaves_the_answer_stopped(tmp_path, key, settings):
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["127.0.0.1"]
    with platform_on_a_slow_model(tmp_path) as base:
        body = {"model": "policy", "messages": QUESTION, "stream": True}
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60) as response:
            contents = (line for line in response.iter_lines() if '"content":"word' in line)
            first = next(contents)
            next(contents)
        answer_id = first.split('"id":"', 1)[1].split('"', 1)[0]
        assert wait_until(lambda: stored(answer_id).status != "streaming", timeout=30)
    answer = stored(answer_id)
    assert answer.status == "stopped"
    assert answer.content.startswith("word0 word1 ")
    assert "word99" not in answer.content


def test_a_client_that_gives_up_on_a_whole_answer_leaves_it_stopped(tmp_path, key, settings):
    """Not streamed: the client's timeout (3 s: time for a fresh server's first request and the model's
    first words) ends the request; the platform stops generating (and gives the slot back) rather than
    finish a 30 s answer nobody will read."""
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["127.0.0.1"]
    with platform_on_a_slow_model(tmp_path, words=300) as base:
        body = {"model": "policy", "messages": QUESTION}
        headers = {"Authorization": f"Bearer {key}"}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=httpx.Timeout(60, read=3))
        answers = Message.objects.filter(role="assistant")
        assert wait_until(lambda: answers.exists() and answers.get().status != "streaming", timeout=30)
        answer = answers.get()
        assert answer.status == "stopped", answer.content
        assert answer.content.startswith("word0 ")
        assert "word299" not in answer.content
