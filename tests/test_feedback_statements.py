"""The rating hot path's round trips on PostgreSQL (``feedback.services.feedback_upsert``): lock the
user's satisfaction, read the answer, step and feedback given, write both; three statements for a new
rating and for a change, where the ORM path made six (plus BEGIN and COMMIT either way)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from feedback import services
from feedback.models import Feedback, UserSatisfaction
from tests.factories import AssistantMessageFactory, ConversationFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_a_rating_and_its_change_are_three_statements_each_and_keep_the_score(alice):
    answer = AssistantMessageFactory(conversation=ConversationFactory(user=alice))
    services.feedback_upsert(user=alice, message_id=answer.id, comment="first")  # the satisfaction row exists

    with CaptureQueriesContext(connection) as new:
        created = services.feedback_upsert(user=alice, message_id=answer.id, step_index=0, thumbs="up", tags=["clear"])
    with CaptureQueriesContext(connection) as changed:
        updated = services.feedback_upsert(user=alice, message_id=answer.id, step_index=0, rating=1)

    assert len([q for q in new.captured_queries if "SAVEPOINT" not in q["sql"]]) == 3
    assert len([q for q in changed.captured_queries if "SAVEPOINT" not in q["sql"]]) == 3
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
