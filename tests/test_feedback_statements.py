"""The rating hot path's round trips on PostgreSQL (``feedback.services.feedback_upsert``): lock the
user's satisfaction and read the answer, step and feedback given in one statement, write both in
another; two statements for a new rating and for a change, where the ORM path made six (plus BEGIN
and COMMIT either way)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from feedback import services
from feedback.models import Feedback, UserSatisfaction
from tests.factories import AssistantMessageFactory, ConversationFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_a_rating_and_its_change_are_two_statements_each_and_keep_the_score(alice):
    answer = AssistantMessageFactory(conversation=ConversationFactory(user=alice))
    services.feedback_upsert(user=alice, message_id=answer.id, comment="first")  # the satisfaction row exists

    with CaptureQueriesContext(connection) as new:
        created = services.feedback_upsert(user=alice, message_id=answer.id, step_index=0, thumbs="up", tags=["clear"])
    with CaptureQueriesContext(connection) as changed:
        updated = services.feedback_upsert(user=alice, message_id=answer.id, step_index=0, rating=1)

    assert len([q for q in new.captured_queries if "SAVEPOINT" not in q["sql"]]) == 2
    assert len([q for q in changed.captured_queries if "SAVEPOINT" not in q["sql"]]) == 2
    assert (created.created, updated.created) == (True, False)
    assert updated.feedback.pk == created.feedback.pk
    row = Feedback.objects.get(pk=created.feedback.pk)
    assert (row.step.index, row.thumbs, row.rating, row.tags, row.model_version_id) == (
        0, "up", 1, ["clear"], answer.model_version_id,
    )  # fmt: skip
    assert row.created_at == created.feedback.created_at
    satisfaction = UserSatisfaction.objects.get(user=alice)
    assert (satisfaction.count, satisfaction.thumbs_up, satisfaction.ratings, satisfaction.rating_sum) == (1, 1, 1, 1)
    assert satisfaction.value_sum == pytest.approx(0.5)  # the mean of thumbs up (1) and one star (0)
    assert updated.satisfaction.score == satisfaction.score == 0.5


def test_token_authentication_in_one_query_answers_as_drfs(alice):
    """``rlhf_site.auth.TokenAuthentication``: one query for the token and its user; DRF's errors."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    key = Token.objects.create(user=alice).key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/assistant/satisfaction")
    assert response.status_code == 200
    assert 'JOIN "authtoken_token"' in queries.captured_queries[0]["sql"]

    client.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    refused = client.get("/api/assistant/satisfaction")
    assert (refused.status_code, refused.json()["error"]["message"]) == (401, "Invalid token.")

    alice.is_active = False
    alice.save()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    inactive = client.get("/api/assistant/satisfaction")
    assert (inactive.status_code, inactive.json()["error"]["message"]) == (401, "User inactive or deleted.")


def test_serializers_sharing_their_fields_give_what_their_own_fields_give_in_every_thread(alice):
    """``core.serializers.FieldsOnceMixin``: one set of bound fields per class serves every instance.
    Output and validation are what an instance with its own fields (given a context, so it builds
    them as DRF does) gives, for different objects and inputs at once in many threads (HTTP_THREADS
    serve requests in parallel): no value or error of one request shows in another's."""
    from concurrent.futures import ThreadPoolExecutor

    from feedback.serializers import FeedbackInputSerializer, FeedbackWriteOutputSerializer

    conversation = ConversationFactory(user=alice)
    results = [
        services.feedback_upsert(user=alice, message_id=AssistantMessageFactory(conversation=conversation).id, **kw)
        for kw in ({"thumbs": "up"}, {"step_index": 0, "rating": 2, "tags": ["clear"]}, {"comment": "ok", "rating": 5})
    ]
    for result in results:
        result.feedback.satisfaction = result.satisfaction
    own = [FeedbackWriteOutputSerializer(r.feedback, context={"own": True}) for r in results]
    shared = FeedbackWriteOutputSerializer(results[0].feedback).fields
    assert shared is FeedbackWriteOutputSerializer(results[1].feedback).fields  # built once, not per instance
    assert own[0].fields is not shared  # a context: its own fields, as DRF builds them
    nested = own[0].fields["satisfaction"]  # under a root with a context: its own too
    assert nested.context == {"own": True}
    assert nested.fields is not shared["satisfaction"].fields
    expected = [dict(serializer.data) for serializer in own]
    assert [e["step_index"] for e in expected] == [None, 0, None]  # they differ, so a mix-up would show

    inputs = [
        {"message_id": str(results[0].feedback.message_id), "thumbs": "down"},
        {"message_id": "not-a-uuid", "rating": 9},
        {"message_id": str(results[1].feedback.message_id), "step_index": 3, "tags": ["a", "b"], "extra": 1},
    ]

    def validate(payload: dict, own: bool) -> tuple[bool, object]:
        serializer = FeedbackInputSerializer(data=payload, context={"own": True} if own else {})
        valid = serializer.is_valid()
        return valid, (dict(serializer.validated_data) if valid else serializer.errors)

    expected_in = [validate(payload, own=True) for payload in inputs]
    assert [valid for valid, _ in expected_in] == [True, False, False]

    def both(i: int) -> tuple[dict, tuple[bool, object]]:
        return dict(FeedbackWriteOutputSerializer(results[i % 3].feedback).data), validate(inputs[i % 3], own=False)

    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(both, range(600)))
    assert outputs == [(expected[i % 3], expected_in[i % 3]) for i in range(600)]
