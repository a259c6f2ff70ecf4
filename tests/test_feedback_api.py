from __future__ import annotations

import uuid

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from core.models import IdempotencyRecord
from feedback.models import Comparison, Feedback, UserSatisfaction
from tests.factories import AssistantMessageFactory, ConversationFactory, UserMessageFactory

URL = "/api/assistant/feedback"


def post(client: APIClient, body: object, **headers: str):
    return client.post(URL, body, format="json", headers=headers)


def assert_error(response, status: int, code: str | None = None, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"status", "code", "message", "fields"}
    assert error["status"] == status
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if field is not None:
        assert field in error["fields"], error
    return error


# --- Creating and updating ----------------------------------------------------------------------


def test_it_creates_feedback_and_returns_satisfaction(api, alice, answer):
    response = post(
        api, {"message_id": str(answer.id), "thumbs": "up", "rating": 5, "comment": " Great ", "tags": ["helpful"]}
    )

    assert response.status_code == 201
    body = response.json()
    feedback = Feedback.objects.get(id=body["id"])
    assert (feedback.user, feedback.message, feedback.step) == (alice, answer, None)
    assert (feedback.thumbs, feedback.rating, feedback.comment, feedback.tags) == ("up", 5, "Great", ["helpful"])
    assert body["message_id"] == str(answer.id)
    assert body["step_index"] is None
    assert body["satisfaction"]["score"] == 1.0
    assert body["satisfaction"]["count"] == 1
    satisfaction = UserSatisfaction.objects.get(user=alice)
    assert (satisfaction.count, satisfaction.thumbs_up, satisfaction.ratings, satisfaction.rating_sum) == (1, 1, 1, 5)


def test_it_updates_instead_of_duplicating(api, alice, answer):
    first = post(api, {"message_id": str(answer.id), "thumbs": "up"})
    second = post(api, {"message_id": str(answer.id), "thumbs": "down", "rating": 1})

    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert Feedback.objects.filter(user=alice).count() == 1
    satisfaction = UserSatisfaction.objects.get(user=alice)
    # The old thumbs-up no longer counts: one scored feedback, value mean(0, 0) = 0.
    assert (satisfaction.count, satisfaction.thumbs_up, satisfaction.thumbs_down) == (1, 0, 1)
    assert second.json()["satisfaction"]["score"] == 0.0


def test_fields_left_out_keep_their_value_and_null_clears(api, answer):
    post(api, {"message_id": str(answer.id), "thumbs": "up"})
    post(api, {"message_id": str(answer.id), "rating": 4})
    feedback = Feedback.objects.get()
    assert (feedback.thumbs, feedback.rating) == ("up", 4)

    response = post(api, {"message_id": str(answer.id), "thumbs": None})
    feedback.refresh_from_db()
    assert (feedback.thumbs, feedback.rating) == (None, 4)
    assert response.json()["satisfaction"]["score"] == 0.75


def test_it_rates_one_step_separately_from_the_message(api, alice, answer):
    message_level = post(api, {"message_id": str(answer.id), "rating": 4})
    step_level = post(api, {"message_id": str(answer.id), "step_index": 2, "thumbs": "down"})

    assert (message_level.status_code, step_level.status_code) == (201, 201)
    assert step_level.json()["step_index"] == 2
    step_feedback = Feedback.objects.get(id=step_level.json()["id"])
    assert step_feedback.step == answer.steps.get(index=2)
    assert Feedback.objects.filter(user=alice).count() == 2
    assert step_level.json()["satisfaction"]["count"] == 2


def test_a_comment_alone_is_feedback_without_a_score(api, alice, answer):
    response = post(api, {"message_id": str(answer.id), "comment": "Too terse."})
    assert response.status_code == 201
    assert response.json()["satisfaction"] == {
        "score": None, "count": 0, "thumbs_up": 0, "thumbs_down": 0, "ratings": 0, "mean_rating": None
    }  # fmt: skip


def test_clearing_everything_is_refused_and_changes_nothing(api, answer):
    post(api, {"message_id": str(answer.id), "thumbs": "up"})
    response = post(api, {"message_id": str(answer.id), "thumbs": None})
    assert_error(response, 400, "empty_feedback")
    assert Feedback.objects.get().thumbs == "up"
    assert UserSatisfaction.objects.get().thumbs_up == 1


# --- Bad input: one JSON shape, never a 500 -------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"thumbs": "up"}, "message_id"),
        ({"message_id": "not-a-uuid", "thumbs": "up"}, "message_id"),
        ({"message_id": 12, "thumbs": "up"}, "message_id"),
        ({"message_id": "MID", "thumbs": "sideways"}, "thumbs"),
        ({"message_id": "MID", "rating": 0}, "rating"),
        ({"message_id": "MID", "rating": 6}, "rating"),
        ({"message_id": "MID", "rating": "five"}, "rating"),
        ({"message_id": "MID", "rating": 4.5}, "rating"),
        ({"message_id": "MID", "step_index": -1, "thumbs": "up"}, "step_index"),
        ({"message_id": "MID", "step_index": "first", "thumbs": "up"}, "step_index"),
        ({"message_id": "MID", "step_index": 10**30, "thumbs": "up"}, "step_index"),
        ({"message_id": "MID", "comment": "nul \u0000 byte"}, "comment"),
        ({"message_id": "MID", "tags": ["help\u0000ful"]}, "tags"),
        ({"message_id": "MID", "thumbs": True}, "thumbs"),
        ({"message_id": "MID", "comment": "x" * 2001}, "comment"),
        ({"message_id": "MID", "comment": 42.5}, "comment"),
        ({"message_id": "MID", "tags": "helpful"}, "tags"),
        ({"message_id": "MID", "thumbs": "up", "stars": 5}, "stars"),
    ],
)
def test_it_rejects_bad_fields_with_a_field_error(api, answer, body, field):
    body = {k: (str(answer.id) if v == "MID" else v) for k, v in body.items()}
    assert_error(post(api, body), 400, field=field)
    assert not Feedback.objects.exists()


def test_it_rejects_a_rating_above_five_with_the_validator_message(api, answer):
    error = assert_error(post(api, {"message_id": str(answer.id), "rating": 6}), 400, "max_value", "rating")
    assert error["fields"]["rating"] == ["Ensure this value is less than or equal to 5."]


def test_it_rejects_a_body_without_any_feedback(api, answer):
    error = assert_error(post(api, {"message_id": str(answer.id)}), 400)
    assert error["message"] == "Send at least one of thumbs, rating, comment, tags or correction."


def test_it_rejects_unknown_tags(api, answer):
    error = assert_error(
        post(api, {"message_id": str(answer.id), "thumbs": "up", "tags": ["rude"]}), 400, "unknown_tag", "tags"
    )
    assert "rude" in error["fields"]["tags"][0]
    assert not Feedback.objects.exists()


@override_settings(FEEDBACK_TAGS=["rude"])
def test_the_tag_set_is_configurable(api, answer):
    assert post(api, {"message_id": str(answer.id), "thumbs": "down", "tags": ["rude"]}).status_code == 201


def test_it_rejects_a_step_index_out_of_range(api, answer):
    error = assert_error(
        post(api, {"message_id": str(answer.id), "step_index": 3, "thumbs": "up"}),
        400,
        "step_out_of_range",
        "step_index",
    )
    assert error["message"] == "Step index 3 is out of range: it has 3 steps (0..2)."


def test_it_rejects_a_user_message(api, conversation):
    question = UserMessageFactory(conversation=conversation)
    assert_error(
        post(api, {"message_id": str(question.id), "thumbs": "up"}), 400, "not_an_assistant_message", "message_id"
    )


def test_an_unknown_message_is_not_found(api):
    assert_error(post(api, {"message_id": str(uuid.uuid4()), "thumbs": "up"}), 404, "not_found")


def test_malformed_json_is_a_400(api):
    response = api.post(URL, data='{"message_id": ', content_type="application/json")
    error = assert_error(response, 400, "parse_error")
    assert "not valid JSON" in error["message"]


def test_a_json_array_body_is_a_400(api):
    assert_error(api.post(URL, data="[1, 2]", content_type="application/json"), 400)


def test_nan_is_not_json(api, answer):
    body = f'{{"message_id": "{answer.id}", "rating": NaN}}'
    assert_error(api.post(URL, data=body, content_type="application/json"), 400, "parse_error")


def test_form_data_is_unsupported(api, answer):
    response = api.post(URL, data={"message_id": str(answer.id), "thumbs": "up"}, format="multipart")
    assert_error(response, 415, "unsupported_media_type")


@override_settings(API_MAX_BODY_BYTES=1024)
def test_an_oversized_body_is_a_413(api, answer):
    response = post(api, {"message_id": str(answer.id), "comment": "x" * 1500})
    error = assert_error(response, 413, "payload_too_large")
    assert "1024 bytes" in error["message"]
    assert not Feedback.objects.exists()


def test_unknown_api_paths_answer_json_404(api):
    assert_error(api.get("/api/assistant/nothing-here"), 404, "not_found")


def test_a_wrong_method_is_a_405(api):
    assert_error(api.put(URL, {}, format="json"), 405, "method_not_allowed")


# --- Authentication and ownership ---------------------------------------------------------------


def test_anonymous_calls_get_401(answer):
    response = post(APIClient(), {"message_id": str(answer.id), "thumbs": "up"})
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"
    assert not Feedback.objects.exists()


def test_a_bad_token_gets_401(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-key")
    assert_error(client.get(URL), 401, "authentication_failed")


def test_another_users_message_is_404_and_reveals_nothing(bob_api, answer):
    response = post(bob_api, {"message_id": str(answer.id), "thumbs": "down"})
    unknown = post(bob_api, {"message_id": str(uuid.uuid4()), "thumbs": "down"})
    assert assert_error(response, 404) == assert_error(unknown, 404)
    assert not Feedback.objects.exists()


def test_another_users_step_is_404(bob_api, answer):
    assert_error(post(bob_api, {"message_id": str(answer.id), "step_index": 0, "thumbs": "up"}), 404)


def test_another_users_feedback_is_404_and_survives_delete(api, bob_api, answer):
    feedback_id = post(api, {"message_id": str(answer.id), "thumbs": "up"}).json()["id"]
    assert_error(bob_api.get(f"{URL}/{feedback_id}"), 404)
    assert_error(bob_api.delete(f"{URL}/{feedback_id}"), 404)
    assert Feedback.objects.filter(id=feedback_id).exists()
    assert bob_api.get(URL).json()["results"] == []


def test_session_auth_requires_csrf(alice, answer):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(alice)
    response = post(client, {"message_id": str(answer.id), "thumbs": "up"})
    error = assert_error(response, 403)
    assert "CSRF" in error["message"]
    assert not Feedback.objects.exists()


def test_session_auth_with_csrf_token_works(alice, answer):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get("/admin/login/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = client.post(
        URL, {"message_id": str(answer.id), "thumbs": "up"}, format="json", headers={"X-CSRFToken": token}
    )
    assert response.status_code == 201
    assert Feedback.objects.get().user == alice


# --- Idempotency ----------------------------------------------------------------------------------


def test_a_retry_with_the_same_key_replays_the_first_answer(api, alice, answer):
    body = {"message_id": str(answer.id), "thumbs": "up", "rating": 5}
    first = post(api, body, **{"Idempotency-Key": "k-1"})
    post(api, {"message_id": str(answer.id), "rating": 1})  # a later, different write
    retry = post(api, body, **{"Idempotency-Key": "k-1"})

    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.json() == first.json()
    feedback = Feedback.objects.get()
    assert feedback.rating == 1  # the retry wrote nothing
    assert UserSatisfaction.objects.get(user=alice).count == 1
    assert IdempotencyRecord.objects.filter(user=alice, key="k-1").count() == 1


def test_the_same_key_with_another_body_is_refused(api, answer):
    post(api, {"message_id": str(answer.id), "thumbs": "up"}, **{"Idempotency-Key": "k-2"})
    response = post(api, {"message_id": str(answer.id), "thumbs": "down"}, **{"Idempotency-Key": "k-2"})
    assert_error(response, 422, "idempotency_key_reused")
    assert Feedback.objects.get().thumbs == "up"


def test_idempotency_keys_are_per_user(api, bob_api, bob, answer):
    bob_answer = AssistantMessageFactory(conversation=ConversationFactory(user=bob))
    post(api, {"message_id": str(answer.id), "thumbs": "up"}, **{"Idempotency-Key": "same"})
    response = post(bob_api, {"message_id": str(bob_answer.id), "thumbs": "up"}, **{"Idempotency-Key": "same"})
    assert response.status_code == 201
    assert Feedback.objects.count() == 2


def test_a_failed_request_does_not_burn_the_key(api, answer):
    assert post(api, {"message_id": str(answer.id), "rating": 9}, **{"Idempotency-Key": "k-3"}).status_code == 400
    assert post(api, {"message_id": str(answer.id), "rating": 4}, **{"Idempotency-Key": "k-3"}).status_code == 201


# --- Throttling -----------------------------------------------------------------------------------


def test_it_throttles_per_user_with_retry_after(api, bob_api, answer, monkeypatch):
    from rest_framework.throttling import UserRateThrottle

    clock = [600.0]  # 0 s into a minute
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "3/min"})
    monkeypatch.setattr(UserRateThrottle, "timer", lambda self: clock[0])
    for _ in range(3):
        assert api.get(URL).status_code == 200
    response = api.get(URL)
    error = assert_error(response, 429, "throttled")
    # Over a rolling minute (core.ratelimit.hit): 60 s for the window's end, then a third of
    # the next minute for its weight to fall to two requests.
    assert response["Retry-After"] == "80"
    assert "available in 80 seconds" in error["message"]
    assert bob_api.get(URL).status_code == 200  # bob has his own budget
    clock[0] = 679.0
    assert api.get(URL).status_code == 429
    clock[0] = 680.0
    assert api.get(URL).status_code == 200


# --- Lists, retrieve, delete ----------------------------------------------------------------------


def test_it_lists_only_own_feedback_paginated(api, alice, conversation, django_assert_max_num_queries):
    for _ in range(4):
        post(api, {"message_id": str(AssistantMessageFactory(conversation=conversation).id), "thumbs": "up"})
    with django_assert_max_num_queries(5):
        response = api.get(URL, {"page_size": 3})
    body = response.json()
    assert body["count"] == 4
    assert len(body["results"]) == 3
    assert body["next"]
    assert {row["thumbs"] for row in body["results"]} == {"up"}


def test_it_filters_feedback_by_message(api, answer, conversation):
    other = AssistantMessageFactory(conversation=conversation)
    post(api, {"message_id": str(answer.id), "thumbs": "up"})
    post(api, {"message_id": str(other.id), "thumbs": "down"})
    rows = api.get(URL, {"message_id": str(other.id)}).json()["results"]
    assert [row["thumbs"] for row in rows] == ["down"]
    assert_error(api.get(URL, {"message_id": "nope"}), 400, field="message_id")


def test_it_retrieves_and_deletes_own_feedback(api, alice, answer):
    feedback_id = post(api, {"message_id": str(answer.id), "thumbs": "up"}).json()["id"]
    assert api.get(f"{URL}/{feedback_id}").json()["thumbs"] == "up"

    response = api.delete(f"{URL}/{feedback_id}")
    assert response.status_code == 200
    assert response.json()["satisfaction"]["count"] == 0
    assert not Feedback.objects.exists()
    satisfaction = UserSatisfaction.objects.get(user=alice)
    assert (satisfaction.count, satisfaction.thumbs_up, satisfaction.value_sum) == (0, 0, 0.0)


def test_it_lists_own_conversations_and_their_messages(api, bob, answer, django_assert_max_num_queries):
    ConversationFactory(user=bob)
    conversations = api.get("/api/assistant/conversations").json()
    assert conversations["count"] == 1
    assert conversations["results"][0]["id"] == str(answer.conversation_id)
    assert conversations["results"][0]["message_count"] == 2

    with django_assert_max_num_queries(6):
        messages = api.get(f"/api/assistant/conversations/{answer.conversation_id}/messages").json()
    assert [m["role"] for m in messages["results"]] == ["user", "assistant"]
    assert [s["index"] for s in messages["results"][1]["steps"]] == [0, 1, 2]
    assert messages["results"][1]["parent_id"] == messages["results"][0]["id"]


def test_another_users_conversation_is_404(bob_api, answer):
    assert_error(bob_api.get(f"/api/assistant/conversations/{answer.conversation_id}"), 404)
    assert_error(bob_api.get(f"/api/assistant/conversations/{answer.conversation_id}/messages"), 404)


def test_a_huge_feedback_id_is_a_404_not_a_500(api):
    assert_error(api.get(f"{URL}/{10**30}"), 404)
    assert_error(api.delete(f"{URL}/{10**30}"), 404)


def test_a_malformed_conversation_id_is_a_json_404(api):
    assert_error(api.get("/api/assistant/conversations/not-a-uuid/messages"), 404)


# --- Comparisons ----------------------------------------------------------------------------------


@pytest.fixture
def siblings(answer):
    return answer.parent, answer, AssistantMessageFactory(conversation=answer.conversation, parent=answer.parent)


def test_it_records_a_comparison_and_updates_it(api, alice, siblings):
    prompt, a, b = siblings
    body = {"prompt_message_id": str(prompt.id), "chosen_message_id": str(a.id), "rejected_message_id": str(b.id)}
    first = api.post("/api/assistant/comparisons", body, format="json")
    flipped = {**body, "chosen_message_id": str(b.id), "rejected_message_id": str(a.id)}
    second = api.post("/api/assistant/comparisons", flipped, format="json")

    assert (first.status_code, second.status_code) == (201, 200)
    comparison = Comparison.objects.get()
    assert (comparison.user, comparison.prompt, comparison.chosen, comparison.rejected) == (alice, prompt, b, a)


def test_a_comparison_needs_two_answers_to_the_prompt(api, siblings, conversation):
    prompt, a, _ = siblings
    stranger = AssistantMessageFactory(conversation=conversation)  # answers another prompt
    body = {
        "prompt_message_id": str(prompt.id),
        "chosen_message_id": str(a.id),
        "rejected_message_id": str(stranger.id),
    }
    assert_error(
        api.post("/api/assistant/comparisons", body, format="json"),
        400,
        "not_an_answer_to_prompt",
        "rejected_message_id",
    )
    same = {**body, "rejected_message_id": str(a.id)}
    assert_error(api.post("/api/assistant/comparisons", same, format="json"), 400, "same_answer")
    assert not Comparison.objects.exists()


def test_another_users_comparison_messages_are_404(bob_api, siblings):
    prompt, a, b = siblings
    body = {"prompt_message_id": str(prompt.id), "chosen_message_id": str(a.id), "rejected_message_id": str(b.id)}
    assert_error(bob_api.post("/api/assistant/comparisons", body, format="json"), 404)
    assert not Comparison.objects.exists()
