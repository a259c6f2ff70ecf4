"""The OpenAI-compatible inference API (/v1/) in process, through Django's async test client, with the
policy replaced by a scripted one (the model is the boundary). The official ``openai`` client against
a real uvicorn server and the bootstrapped model: tests/e2e/test_inference_openai.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import jwt
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import AsyncClient
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from feedback import chat, inference
from feedback.models import Conversation, Feedback, Message
from tests.factories import ConversationFactory, ModelVersionFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER = ["Sure", ".\n", "1. Boil", " water.\n", "2. Add", " the egg.\n", "3. Wait", " nine minutes."]
QUESTION = "How do I boil an egg?"


class ScriptedPolicy:
    def __init__(self, version, chunks=ANSWER, delay: float = 0.0):
        self.version_id, self.label = version.id, version.label
        self.chunks, self.delay = chunks, delay
        self.seen: list[list[dict[str, str]]] = []
        self.options: list[object] = []

    async def stream(self, messages, *, max_new_tokens=None, options=None, usage=None) -> AsyncIterator[str]:
        self.seen.append(messages)
        self.options.append(options)
        if usage is not None:
            usage.prompt_tokens = 11
        for i, chunk in enumerate(self.chunks):
            await asyncio.sleep(self.delay)
            if usage is not None:
                usage.completion_tokens = i + 1
            yield chunk


@pytest.fixture
def policy(monkeypatch):
    version = ModelVersionFactory(number=7, status="live")
    scripted = ScriptedPolicy(version)

    async def get_policy():
        return scripted

    async def get_policy_for(version_id):
        assert version_id == version.id
        return scripted

    monkeypatch.setattr(chat.stream, "get_policy", get_policy)
    monkeypatch.setattr(chat.stream, "get_policy_for", get_policy_for)
    return scripted


@pytest.fixture
def key(alice):
    return Token.objects.create(user=alice).key


class client_for:  # AsyncClient(headers=...) does not reach the request in Django 5.2
    def __init__(self, key: str) -> None:
        self.client, self.headers = AsyncClient(), {"Authorization": f"Bearer {key}"}

    async def get(self, path: str):
        return await self.client.get(path, headers=self.headers)

    async def post(self, path: str, data, content_type: str):
        return await self.client.post(path, data, content_type=content_type, headers=self.headers)


async def complete(key: str, **body):
    body = {"model": "policy", "messages": [{"role": "user", "content": QUESTION}], **body}
    return await client_for(key).post("/v1/chat/completions", body, content_type="application/json")


async def read_events(response) -> list[str]:
    raw = b"".join([chunk async for chunk in response.streaming_content]).decode()
    return [block.removeprefix("data: ") for block in raw.split("\n\n") if block]


def error_of(response) -> dict:
    body = json.loads(response.content)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# --- Answers, stored -----------------------------------------------------------------------------


async def test_it_answers_stores_the_turn_as_the_web_chat_does_and_the_id_can_be_rated(alice, key, policy):
    response = await complete(key, temperature=0.2, top_p=0.5, max_tokens=40)
    assert response.status_code == 200, response.content
    body = json.loads(response.content)

    answer = await sync_to_async(Message.objects.select_related("conversation", "parent", "model_version").get)(
        role="assistant"
    )
    assert body["id"] == str(answer.id)
    assert body["object"] == "chat.completion"
    assert body["model"] == "policy:7"
    assert body["conversation_id"] == str(answer.conversation_id)
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "".join(ANSWER)}, "finish_reason": "stop",
         "logprobs": None}
    ]  # fmt: skip
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 8, "total_tokens": 19}
    assert (answer.status, answer.content, answer.model_version.label) == ("complete", "".join(ANSWER), "policy:7")
    assert (answer.parent.content, answer.conversation.user_id, answer.conversation.title) == (
        QUESTION,
        alice.id,
        QUESTION,
    )
    assert answer.token_count == 8
    assert None not in (answer.duration_ms, answer.time_to_first_token_ms)
    steps = await sync_to_async(list)(answer.steps.order_by("index").values_list("content", flat=True))
    assert steps == ["Sure.", "1. Boil water.", "2. Add the egg.", "3. Wait nine minutes."]
    sampling = policy.options[0]
    assert (sampling.temperature, sampling.top_p, sampling.max_new_tokens) == (0.2, 0.5, 40)

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")  # the same key, as OpenAI clients send it
    rated = await sync_to_async(api.post)(
        "/api/assistant/feedback", {"message_id": body["id"], "rating": 5, "step_index": 1}, format="json"
    )
    assert rated.status_code == 201, rated.content
    feedback = await sync_to_async(Feedback.objects.select_related("step").get)()
    assert (feedback.message_id, feedback.rating, feedback.step.index, feedback.user_id) == (answer.id, 5, 1, alice.id)


async def test_it_streams_server_sent_events_ending_with_done_and_a_usage_chunk(key, policy):
    response = await complete(key, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    events = await read_events(response)

    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert {c["id"] for c in chunks} == {str(answer.id)}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "".join(ANSWER) == answer.content
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert answer.status == "complete"


async def test_a_stop_string_ends_the_answer_before_it_and_the_model_stops(key, policy):
    response = await complete(key, stop=["2."], stream=True)
    events = await read_events(response)
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert text == answer.content == "Sure.\n1. Boil water.\n"
    assert (answer.status, answer.token_count) == ("complete", 4)  # the pieces passed on


async def test_a_new_conversation_stores_the_earlier_messages_and_the_model_gets_them_by_the_rule(alice, key, policy):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
    ]
    response = await complete(key, messages=messages)
    assert response.status_code == 200, response.content
    assert policy.seen == [[{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else QUESTION}
                            for m in messages]]  # fmt: skip
    conversation = await sync_to_async(Conversation.objects.get)()
    rows = await sync_to_async(list)(conversation.messages.order_by("created_at", "id").values_list("role", "content"))
    sent = await sync_to_async(Message.objects.get)(content="Hello!")
    assert (sent.source, sent.external_model, sent.model_version_id) == ("external", inference.CLIENT_SENT, None)
    assert rows == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", QUESTION),
                    ("assistant", "".join(ANSWER))]  # fmt: skip


async def test_metadata_conversation_id_continues_the_callers_conversation_from_its_stored_turns(alice, key, policy):
    first = json.loads((await complete(key)).content)
    response = await complete(
        key,
        messages=[{"role": "user", "content": "ignored, the stored turns are the history"},
                  {"role": "user", "content": "And a duck egg?"}],
        metadata={"conversation_id": first["conversation_id"]},
    )  # fmt: skip
    assert response.status_code == 200
    assert json.loads(response.content)["conversation_id"] == first["conversation_id"]
    assert policy.seen[1] == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "".join(ANSWER)},
        {"role": "user", "content": "And a duck egg?"},
    ]
    assert await sync_to_async(Conversation.objects.count)() == 1
    assert await sync_to_async(Message.objects.count)() == 4


async def test_another_users_conversation_is_not_found_and_nothing_is_stored(key, policy):
    other = await sync_to_async(ConversationFactory)(user=await sync_to_async(UserFactory)(username="bob"))
    response = await complete(key, metadata={"conversation_id": str(other.id)})
    assert response.status_code == 404
    assert error_of(response)["param"] == "metadata.conversation_id"
    assert await sync_to_async(Message.objects.count)() == 0


async def test_a_supabase_jwt_user_gets_answers(settings, policy):
    settings.SUPABASE_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters"
    token = jwt.encode(
        {"sub": "abc", "aud": "authenticated", "exp": 4_000_000_000}, settings.SUPABASE_JWT_SECRET, algorithm="HS256"
    )
    response = await complete(token)
    assert response.status_code == 200, response.content
    conversation = await sync_to_async(Conversation.objects.select_related("user").get)()
    assert conversation.user.username == "supabase-abc"


async def test_the_client_leaving_mid_stream_stores_the_answer_as_stopped(key, policy):
    policy.delay = 0.05
    response = await complete(key, stream=True)
    received: list[bytes] = []

    async def serve() -> None:
        async for chunk in response.streaming_content:
            received.append(chunk)

    # What Django's ASGI handler does when the client goes: it cancels the task sending the response
    # (through uvicorn: tests/e2e/test_inference_openai.py).
    task = asyncio.create_task(serve())
    while len(received) < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert answer.status == "stopped"
    assert answer.content == "Sure"
    # The user's generation slot was given back.
    user = await sync_to_async(get_user_model().objects.get)(username="alice")
    await sync_to_async(inference.slot_acquire)(user=user)


async def test_no_prompt_or_answer_text_is_logged_at_info(key, policy, caplog):
    with caplog.at_level(logging.INFO):
        response = await complete(key, stream=True)
        await read_events(response)
    assert "completion" in caplog.text
    for record in caplog.records:
        message = record.getMessage()
        assert "boil" not in message.lower(), message
        assert "water" not in message, message


# --- Models ---------------------------------------------------------------------------------------


@pytest.fixture
def canary(policy, settings, monkeypatch):
    from models_registry.services import canary_start

    settings.REGISTRY_FOUR_EYES = False
    candidate = ModelVersionFactory(number=8, status="approved")
    canary = canary_start(version_id=candidate.id, share=0.99, actor=None)
    scripted = ScriptedPolicy(candidate, chunks=["1. Canary", " answer."])

    async def get_policy_for(version_id):
        return scripted if version_id == candidate.id else policy

    monkeypatch.setattr(chat.stream, "get_policy_for", get_policy_for)
    return canary


async def test_models_lists_the_live_policy_and_the_canary_only_to_those_who_may_see_it(key, canary, operator):
    body = json.loads((await client_for(key).get("/v1/models")).content)
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["policy", "policy:7"]
    operator_key = await sync_to_async(lambda: Token.objects.create(user=operator).key)()
    body = json.loads((await client_for(operator_key).get("/v1/models")).content)
    assert [m["id"] for m in body["data"]] == ["policy", "policy:7", "policy:8"]


async def test_policy_is_routed_to_the_conversations_canary_arm(key, canary):
    found = set()
    for _ in range(3):  # a 0.99 share: one draw in a hundred is live
        body = json.loads((await complete(key)).content)
        found.add(body["model"])
    assert "policy:8" in found
    answer = await sync_to_async(Message.objects.filter(role="assistant", model_version__number=8).first)()
    conversation = await sync_to_async(Conversation.objects.get)(id=answer.conversation_id)
    assert conversation.arm == "canary"


async def test_a_named_version_answers_only_callers_who_may_use_it(key, canary, operator):
    response = await complete(key, model="policy:8")
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found"
    operator_key = await sync_to_async(lambda: Token.objects.create(user=operator).key)()
    body = json.loads((await complete(operator_key, model="policy:8")).content)
    assert body["model"] == "policy:8"
    assert (await complete(key, model="policy:7")).status_code == 200


# --- Errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "param", "text"),
    [
        ({"n": 2}, 400, "n", "Only n = 1"),
        ({"max_tokens": 100_000}, 400, "max_tokens", "INFERENCE_MAX_TOKENS"),
        ({"max_tokens": 0}, 400, "max_tokens", "from 1"),
        ({"temperature": 3}, 400, "temperature", "from 0 to 2"),
        ({"top_p": "high"}, 400, "top_p", "from 0 to 1"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "up to 4"),
        ({"stream": "yes"}, 400, "stream", "true or false"),
        ({"model": "gpt-4o"}, 404, "model", "does not exist"),
        ({"model": "policy:99"}, 404, "model", "does not exist"),
        ({"model": "policy:\u00b2"}, 404, "model", "does not exist"),  # a digit to isdigit(), not to int()
        ({"model": ""}, 400, "model", "model is required"),
        ({"messages": []}, 400, "messages", "non-empty"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", "role"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, 400, "messages", "last message"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content", "text"),
        ({"messages": [{"role": "user", "content": "x" * 4001}]}, 400, "messages", "CHAT_MAX_MESSAGE_CHARS"),
        ({"tools": [{"type": "function"}]}, 400, "tools", "not supported"),
        (
            {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]},
            400,
            "messages[0]",
            "must follow a user message",
        ),
        ({"metadata": {"conversation_id": "nope"}}, 400, "metadata.conversation_id", "UUID"),
    ],
)
async def test_bad_requests_get_openai_errors_naming_the_parameter(key, policy, body, status, param, text):
    response = await complete(key, **body)
    assert response.status_code == status, response.content
    error = error_of(response)
    assert error["param"] == param
    assert text in error["message"]
    assert await sync_to_async(Message.objects.count)() == 0


async def test_the_prompt_size_is_bounded_by_settings(key, policy, settings):
    settings.INFERENCE_MAX_PROMPT_CHARS = 50
    response = await complete(
        key, messages=[{"role": "system", "content": "x" * 60}, {"role": "user", "content": "Hi"}]
    )
    assert response.status_code == 400
    assert error_of(response)["code"] == "context_length_exceeded"
    assert "limit is 50 (INFERENCE_MAX_PROMPT_CHARS)" in error_of(response)["message"]

    settings.INFERENCE_MAX_BODY_BYTES = 1024
    response = await complete(key, messages=[{"role": "user", "content": "x" * 2000}])
    assert response.status_code == 413
    assert "limit is 1024 bytes (INFERENCE_MAX_BODY_BYTES)" in error_of(response)["message"]
    assert await sync_to_async(Message.objects.count)() == 0


async def test_unauthenticated_callers_get_401(policy, db):
    response = await AsyncClient().post(
        "/v1/chat/completions", {"model": "policy", "messages": []}, content_type="application/json"
    )
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"
    response = await complete("0" * 40)
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"
    assert (await AsyncClient().get("/v1/models")).status_code == 401


async def test_invalid_json_wrong_methods_and_unknown_paths_get_openai_errors(key, policy):
    client = client_for(key)
    response = await client.post("/v1/chat/completions", "{not json", content_type="application/json")
    assert (response.status_code, error_of(response)["code"]) == (400, "invalid_json")
    response = await client.get("/v1/chat/completions")
    assert (response.status_code, response["Allow"]) == (405, "POST")
    response = await client.get("/v1/embeddings")
    assert (response.status_code, error_of(response)["code"]) == (404, "unknown_url")


async def test_without_a_live_policy_it_answers_503_and_stores_nothing(key):
    response = await complete(key)
    assert response.status_code == 503
    assert error_of(response)["code"] == "no_live_policy"
    assert await sync_to_async(Message.objects.count)() == 0


async def test_completions_are_rate_limited_per_token_with_retry_after(key, policy, settings):
    settings.INFERENCE_RATE_PER_MINUTE = 1
    assert (await complete(key)).status_code == 200
    response = await complete(key)
    assert response.status_code == 429
    # Over a rolling minute (core.ratelimit.hit): the rest of this window, then the next window until
    # the one hit before weighs nothing (at 1 a minute the estimate waits up to twice the period).
    assert 1 <= int(response["Retry-After"]) <= 121
    assert "INFERENCE_RATE_PER_MINUTE" in error_of(response)["message"]
    assert await sync_to_async(Message.objects.filter(role="user").count)() == 1


async def test_concurrent_generations_per_user_are_bounded(alice, key, policy, settings):
    settings.INFERENCE_MAX_CONCURRENT_PER_USER = 1
    await sync_to_async(inference.slot_acquire)(user=alice)  # another answer of hers is streaming
    response = await complete(key)
    assert response.status_code == 429
    assert error_of(response)["code"] == "too_many_concurrent_requests"
    assert response["Retry-After"] == "1"
    assert await sync_to_async(Message.objects.count)() == 0
    await sync_to_async(inference.slot_release)(user=alice)  # it finished
    assert (await complete(key)).status_code == 200
    assert (await complete(key)).status_code == 200  # each answer gives its slot back


async def test_the_model_is_asked_after_two_database_trips(key, policy, monkeypatch):
    """Authentication, then the rate limit, the model, a slot, the turn and the answer's row in one
    trip (there were three trips)."""
    from tests.helpers import count_database_trips

    monkeypatch.setattr(chat.stream, "served_policy", lambda: policy, raising=False)  # loaded, as after a first answer
    trips = count_database_trips(monkeypatch, policy)
    response = await complete(key)
    assert response.status_code == 200, response.content
    assert trips.when_asked == [2]
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert (answer.status, answer.model_version_id) == ("complete", policy.version_id)


async def test_a_client_gone_during_the_first_trip_leaves_the_answer_stopped_and_its_slot_free(
    alice, key, policy, monkeypatch
):
    import threading
    import time

    from django.core.cache import cache

    from feedback.inference.limits import _slots_key as slots_key

    preparing = threading.Event()
    prepare = inference.completion_prepare

    def slow(**kwargs):
        preparing.set()
        time.sleep(0.3)  # the client goes while this thread stores the turn and the answer
        return prepare(**kwargs)

    monkeypatch.setattr(inference, "completion_prepare", slow)
    request = asyncio.ensure_future(complete(key))
    await asyncio.to_thread(preparing.wait, 5)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await asyncio.sleep(0.5)  # the thread finishes
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert (answer.status, answer.content) == ("stopped", "")
    assert await sync_to_async(cache.get)(slots_key(alice)) == 0
    assert policy.seen == []


async def test_a_fast_models_tokens_go_in_fewer_server_sent_events(key, policy, settings):
    settings.CHAT_TOKEN_BATCH_MS = 5000  # the scripted model gives all its chunks at once; the end flushes
    events = await read_events(await complete(key, stream=True))
    content = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:-2]]  # role, finish, [DONE]
    assert "".join(content) == "".join(ANSWER)
    assert 1 <= len(content) < len(ANSWER)
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert (answer.content, answer.token_count) == ("".join(ANSWER), 8)
