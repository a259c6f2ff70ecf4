"""Per-version analytics on crafted answers and feedback."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from statsmodels.stats.proportion import proportion_confint

from feedback import services
from feedback.analytics import version_analytics
from feedback.models import Comparison, Feedback, Message
from tests.factories import AssistantMessageFactory, ConversationFactory, ModelVersionFactory, UserFactory

pytestmark = pytest.mark.django_db


def answer(version, user, *, status="complete", tokens=10, ttft=100, days_ago=0):
    message = AssistantMessageFactory(
        conversation=ConversationFactory(user=user),
        model_version=version,
        status=status,
        token_count=tokens,
        time_to_first_token_ms=ttft,
    )
    if days_ago:
        Message.objects.filter(id=message.id).update(created_at=timezone.now() - timedelta(days=days_ago))
    return message


@pytest.fixture
def world():
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    v1, v2 = ModelVersionFactory(number=1), ModelVersionFactory(number=2)
    a1 = answer(v1, alice, tokens=10, ttft=100, days_ago=1)
    a2 = answer(v1, alice, tokens=20, ttft=200, days_ago=1)
    b1 = answer(v1, bob, tokens=10, ttft=100, days_ago=1)
    a3 = answer(v1, alice, tokens=30, ttft=300)
    a4 = answer(v1, alice, tokens=40, ttft=400)
    answer(v1, alice, status="stopped", tokens=5, ttft=500)
    answer(v1, alice, status="failed", tokens=None, ttft=None)
    services.feedback_upsert(user=alice, message_id=a1.id, thumbs="up", rating=2)  # thumbs decide: positive
    services.feedback_upsert(user=bob, message_id=b1.id, thumbs="down")  # negative
    services.feedback_upsert(user=alice, message_id=a2.id, rating=5)  # stars only, >= 4: positive
    services.feedback_upsert(user=alice, message_id=a3.id, rating=3)  # stars only, < 4: negative
    services.feedback_upsert(user=alice, message_id=a4.id, comment="no score")  # not a rating
    for index, thumbs in ((0, "up"), (1, "up"), (2, "down")):
        services.feedback_upsert(user=alice, message_id=a4.id, step_index=index, thumbs=thumbs)
    # The answers served yesterday were rated yesterday too (ratings count on the day they are given).
    Feedback.objects.filter(message__in=[a1, a2, b1]).update(created_at=timezone.now() - timedelta(days=1))
    # Side by side against v2: v1 wins twice, loses once, one tie.
    for chosen_v1, tie in ((True, False), (True, False), (False, False), (True, True)):
        mine = answer(v1, alice)
        theirs = AssistantMessageFactory(conversation=mine.conversation, parent=mine.parent, model_version=v2)
        chosen, rejected = (mine, theirs) if chosen_v1 else (theirs, mine)
        services.comparison_record(
            user=alice, prompt_id=mine.parent_id, chosen_id=chosen.id, rejected_id=rejected.id, is_tie=tie
        )
    return v1, v2


def test_it_summarises_what_a_version_served_and_how_it_was_received(world):
    v1, _ = world

    result = version_analytics(v1)
    total = result.total

    assert total.served == 11  # 7 above and the 4 compared
    assert (total.stopped_failed.value, total.stopped_failed.n) == (pytest.approx(2 / 11), 11)
    assert total.rated == 4  # a1, b1, a2, a3
    assert (total.positive.value, total.positive.n) == (0.5, 4)
    low, high = proportion_confint(2, 4, alpha=0.05, method="wilson")
    assert (total.positive.low, total.positive.high) == (pytest.approx(low), pytest.approx(high))
    assert (total.rating.value, total.rating.n) == (pytest.approx((2 + 5 + 3) / 3), 3)
    assert total.rating.low < total.rating.value < total.rating.high
    assert (total.step_down.value, total.step_down.n) == (pytest.approx(1 / 3), 3)
    # Lengths of the 10 answers that produced something (the failed one has none).
    assert total.length.n == 10
    assert total.length.value == pytest.approx((10 + 20 + 10 + 30 + 40 + 5 + 4 * 10) / 10)
    assert total.ttft_ms.n == 10


def test_it_counts_side_by_side_votes_against_each_other_version(world):
    v1, v2 = world
    assert version_analytics(v1).comparisons == {"policy:2": {"won": 2, "lost": 1, "tied": 1}}
    assert version_analytics(v2).comparisons == {"policy:1": {"won": 1, "lost": 2, "tied": 1}}
    assert Comparison.objects.count() == 4


def test_it_gives_the_positive_rate_per_day_of_the_answer(world):
    v1, _ = world
    yesterday, today = version_analytics(v1).days
    assert (yesterday.served, yesterday.rated, yesterday.positive.n, yesterday.positive.value) == (3, 3, 3, 2 / 3)
    assert (today.served, today.rated, today.positive.n, today.positive.value) == (8, 1, 1, 0.0)
    assert yesterday.day == today.day - timedelta(days=1)


def test_a_window_keeps_only_answers_served_in_it(world):
    v1, _ = world
    since = timezone.now() - timedelta(hours=12)
    result = version_analytics(v1, since=since)
    assert result.total.served == 8
    assert result.total.positive.n == 1
    assert [day.served for day in result.days] == [8]


def test_a_version_with_nothing_served_has_empty_estimates(db):
    version = ModelVersionFactory(number=3)
    result = version_analytics(version).as_dict()
    assert result["total"]["served"] == 0
    assert result["total"]["positive"] == {"value": None, "low": None, "high": None, "n": 0}
    assert result["days"] == []


def test_feedback_carries_the_version_of_the_answer_it_rates(api, answer):
    answer.model_version = ModelVersionFactory(number=9)
    answer.save()
    api.post("/api/assistant/feedback", {"message_id": str(answer.id), "thumbs": "up"}, format="json")
    api.post(
        "/api/assistant/feedback", {"message_id": str(answer.id), "step_index": 0, "thumbs": "down"}, format="json"
    )
    assert set(Feedback.objects.values_list("model_version_id", flat=True)) == {answer.model_version_id}
