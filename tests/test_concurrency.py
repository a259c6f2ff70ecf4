"""Real concurrent writers on PostgreSQL: the user's satisfaction row lock serialises them, and an
idempotency record's unique key serialises retries."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import close_old_connections, connection

from core.idempotency import idempotent
from core.models import IdempotencyRecord
from feedback import services
from feedback.models import Feedback, UserSatisfaction
from tests.factories import AssistantMessageFactory, ConversationFactory, UserFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def run_together(*calls: Callable[[], Any]) -> list[Any]:
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def worker(i: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[i] = call()
        except Exception as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    close_old_connections()
    return results


def test_two_concurrent_upserts_leave_one_row_and_a_consistent_score():
    user = UserFactory(username="racer")
    answer = AssistantMessageFactory(conversation=ConversationFactory(user=user))

    results = run_together(
        lambda: services.feedback_upsert(user=user, message_id=answer.id, thumbs="up"),
        lambda: services.feedback_upsert(user=user, message_id=answer.id, rating=1),
    )

    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(r.created for r in results) == [False, True]
    feedback = Feedback.objects.get(user=user, message=answer)
    assert (feedback.thumbs, feedback.rating) == ("up", 1)
    satisfaction = UserSatisfaction.objects.get(user=user)
    assert (satisfaction.count, satisfaction.thumbs_up, satisfaction.ratings) == (1, 1, 1)
    assert satisfaction.value_sum == pytest.approx(feedback.value)


def test_many_concurrent_first_writes_of_one_user_create_one_satisfaction_row():
    user = UserFactory(username="burst")
    conversation = ConversationFactory(user=user)
    answers = [AssistantMessageFactory(conversation=conversation) for _ in range(6)]

    results = run_together(
        *[lambda a=a: services.feedback_upsert(user=user, message_id=a.id, thumbs="up") for a in answers]
    )

    assert not [r for r in results if isinstance(r, Exception)], results
    assert Feedback.objects.filter(user=user).count() == 6
    assert UserSatisfaction.objects.get(user=user).count == 6


def test_a_concurrent_retry_with_the_same_idempotency_key_writes_once():
    user = UserFactory(username="retrier")
    answer = AssistantMessageFactory(conversation=ConversationFactory(user=user))
    writes: list[int] = []

    def call() -> tuple[int, dict[str, Any]]:
        result = services.feedback_upsert(user=user, message_id=answer.id, rating=5)
        writes.append(result.feedback.id)
        return 201, {"id": result.feedback.id}

    def attempt() -> tuple[int, dict[str, Any]]:
        return idempotent(user=user, scope="feedback", key="same", payload={"rating": 5}, call=call)

    results = run_together(attempt, attempt, attempt)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert len(writes) == 1
    assert {r[1]["id"] for r in results} == {writes[0]}
    assert IdempotencyRecord.objects.filter(user=user).count() == 1
    assert UserSatisfaction.objects.get(user=user).ratings == 1
