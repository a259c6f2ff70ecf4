"""Answers generated elsewhere, logged through the API: stored like a chat turn (steps and all),
marked external, rated like any answer, and never counted for a registry version."""

from __future__ import annotations

import pytest
from django.db import IntegrityError

from feedback.analytics import rating_counts
from feedback.models import Conversation, Feedback, Message
from tests.factories import ConversationFactory, ModelVersionFactory, UserFactory

ANSWER = "Sure.\n1. Boil water.\n2. Add the tea.\n3. Wait three minutes."


def log_new(api, **overrides):
    body = {"title": "Tea", "prompt": "How do I make tea?", "answer": ANSWER, "model": "acme-llm-7b", **overrides}
    return api.post("/api/assistant/conversations", body, format="json")


def test_an_application_logs_a_conversation_with_its_own_models_answer_cut_into_steps(api, alice):
    response = log_new(api)
    assert response.status_code == 201, response.content
    body = response.json()
    answer = Message.objects.select_related("parent", "conversation").get(role="assistant")
    assert body["conversation_id"] == str(answer.conversation_id)
    assert body["answer"]["id"] == str(answer.id)
    assert (body["answer"]["source"], body["answer"]["external_model"], body["answer"]["model_version"]) == (
        "external",
        "acme-llm-7b",
        None,
    )
    assert (answer.source, answer.external_model, answer.model_version_id, answer.status) == (
        "external",
        "acme-llm-7b",
        None,
        "complete",
    )
    assert (answer.parent.content, answer.conversation.user, answer.conversation.title) == (
        "How do I make tea?",
        alice,
        "Tea",
    )
    assert list(answer.steps.order_by("index").values_list("content", flat=True)) == [
        "Sure.",
        "1. Boil water.",
        "2. Add the tea.",
        "3. Wait three minutes.",
    ]


def test_its_users_rate_the_logged_answer_and_no_versions_monitoring_counts_it(api):
    live = ModelVersionFactory(status="live")
    answer_id = log_new(api).json()["answer"]["id"]
    rated = api.post("/api/assistant/feedback", {"message_id": answer_id, "thumbs": "down"}, format="json")
    assert rated.status_code == 201, rated.content
    feedback = Feedback.objects.get()
    assert (str(feedback.message_id), feedback.model_version_id) == (answer_id, None)
    assert rating_counts(live.id) == (0, 0)


def test_more_turns_go_into_the_users_own_conversation(api):
    conversation_id = log_new(api).json()["conversation_id"]
    response = api.post(
        f"/api/assistant/conversations/{conversation_id}/turns",
        {"prompt": "And green tea?", "answer": "Cooler water.", "model": "acme-llm-8b"},
        format="json",
    )
    assert response.status_code == 201, response.content
    conversation = Conversation.objects.get(id=conversation_id)
    rows = list(conversation.messages.order_by("created_at", "id").values_list("role", "content", "external_model"))
    assert rows[2:] == [("user", "And green tea?", ""), ("assistant", "Cooler water.", "acme-llm-8b")]


def test_another_users_conversation_is_not_found(api):
    other = ConversationFactory(user=UserFactory(username="bob"))
    response = api.post(
        f"/api/assistant/conversations/{other.id}/turns",
        {"prompt": "Hi", "answer": "Hello", "model": "m"},
        format="json",
    )
    assert response.status_code == 404
    assert Message.objects.count() == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"model": ""}, "model"), ({"prompt": "x" * 4001}, "prompt"), ({"answer": 5}, "answer"), ({"extra": 1}, "extra")],
)
def test_bad_turns_are_refused_with_the_field_named(api, overrides, field):
    response = log_new(api, **overrides)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert Message.objects.count() == 0


def test_a_retry_with_the_same_idempotency_key_logs_the_turn_once(api):
    body = {"prompt": "How do I make tea?", "answer": ANSWER, "model": "m"}
    one = api.post("/api/assistant/conversations", body, format="json", headers={"Idempotency-Key": "k1"})
    two = api.post("/api/assistant/conversations", body, format="json", headers={"Idempotency-Key": "k1"})
    assert one.json() == two.json()
    assert Message.objects.filter(role="assistant").count() == 1


def test_the_database_refuses_an_external_answer_with_a_registry_version(answer):
    answer.source, answer.model_version = "external", ModelVersionFactory()
    with pytest.raises(IntegrityError):
        answer.save()
