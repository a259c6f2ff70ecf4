"""Feedback insights: satisfaction per version over time, reasons and their trend, step ✗ by position,
topics of unhappy conversations, comments of the worst-rated answers; JSON, CSV and the admin page."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from feedback import insights, services
from feedback.models import Feedback
from tests.factories import AssistantMessageFactory, ConversationFactory, ModelVersionFactory, UserFactory

pytestmark = pytest.mark.django_db

TOPICS = {
    "cook": ["How do I cook rice on the stove?", "How long should I cook pasta?", "How do I cook rice without a pot?"],
    "car": ["How do I change a flat car tire?", "Why does my car engine stall?", "How do I wash my car engine?"],
}


def answer_to(user, version, question: str, **rating):
    message = AssistantMessageFactory(
        conversation=ConversationFactory(user=user), model_version=version, parent__content=question
    )
    services.feedback_upsert(user=user, message_id=message.id, **rating)
    return message


@pytest.fixture
def world():
    user = UserFactory(username="rater")
    v1, v2 = ModelVersionFactory(number=1), ModelVersionFactory(number=2)
    # Cooking questions are answered well, car questions badly.
    for _ in range(4):
        for question in TOPICS["cook"]:
            answer_to(user, v2, question, thumbs="up")
        for question in TOPICS["car"]:
            answer_to(user, v2, question, thumbs="down", tags=["inaccurate"], comment="Wrong about cars.")
    old = answer_to(user, v1, "What is tea?", rating=5, tags=["helpful"])
    Feedback.objects.filter(message=old).update(created_at=timezone.now() - timedelta(days=20))
    # Steps: the third step goes wrong most.
    steps_answer = answer_to(user, v2, "Steps please?", thumbs="up")
    for index, thumbs in ((0, "up"), (1, "up"), (2, "down")):
        services.feedback_upsert(user=user, message_id=steps_answer.id, step_index=index, thumbs=thumbs)
    return v1, v2


def test_satisfaction_is_per_version_and_day(world):
    rows = insights.satisfaction(insights.Filters.last_days())
    by_version = {(row["version"], row["ratings"]) for row in rows}
    assert ("policy:1", 1) in by_version
    today = [row for row in rows if row["version"] == "policy:2"]
    assert len(today) == 1
    assert (today[0]["ratings"], today[0]["positive"]) == (25, 13)
    assert today[0]["rate_low"] < today[0]["rate_value"] < today[0]["rate_high"]


def test_tags_come_by_frequency_with_their_trend(world):
    tags = insights.tags(insights.Filters.last_days())
    assert [(t["tag"], t["count"]) for t in tags] == [("inaccurate", 12), ("helpful", 1)]
    inaccurate = tags[0]
    assert inaccurate["share"] == pytest.approx(12 / 13)
    assert inaccurate["trend"] == pytest.approx(1.0)  # all in the window's second half, none in the first


def test_the_step_down_rate_is_by_position(world):
    steps = insights.steps(insights.Filters.last_days())
    assert [(s["position"], s["ratings"], s["down"]) for s in steps] == [(1, 1, 0), (2, 1, 0), (3, 1, 1)]
    assert steps[2]["rate_value"] == 1.0


def test_topics_find_the_unhappy_one_first(world, settings):
    topics = insights.topics(insights.Filters.last_days(), clusters=2)
    assert len(topics) == 2
    unhappy, happy = topics
    assert "car" in unhappy["terms"]
    assert unhappy["positive_value"] == 0.0
    assert "cook" in happy["terms"]


def test_a_topics_terms_are_words_of_its_own_prompts(settings):
    user, version = UserFactory(), ModelVersionFactory(number=1)
    for _ in range(3):
        answer_to(user, version, "Why does my car engine stall?", thumbs="down")
        answer_to(user, version, "How do I cook rice?", thumbs="up")
    unhappy, happy = insights.topics(insights.Filters.last_days(), clusters=2)
    # Four words each: the other topic's words (weight 0 in this centre) are not listed after them.
    assert sorted(unhappy["terms"]) == ["car", "does", "engine", "stall"]
    assert sorted(happy["terms"]) == ["cook", "rice"]
    assert happy["positive_value"] > 0.9
    assert not unhappy["examples"][0]["positive"]


def test_comments_of_the_worst_rated_answers(world):
    comments = insights.comments(insights.Filters.last_days())
    assert len(comments) == 12
    assert {(c["version"], c["thumbs"], c["comment"]) for c in comments} == {("policy:2", "down", "Wrong about cars.")}


def test_a_version_filter_keeps_only_its_feedback(world):
    v1, _ = world
    filters = insights.Filters.last_days(version_id=v1.pk)
    assert [row["version"] for row in insights.satisfaction(filters)] == ["policy:1"]
    assert [t["tag"] for t in insights.tags(filters)] == ["helpful"]


@pytest.fixture
def analyst(api, alice):
    alice.user_permissions.add(Permission.objects.get(codename="view_insights"))
    return api


def test_the_api_needs_its_permission(api, world):
    assert api.get("/api/assistant/insights").status_code == 403


def test_the_api_answers_json_and_one_table_as_csv(analyst, world):
    body = analyst.get("/api/assistant/insights", {"version": "policy:2"}).json()
    assert set(body) == {"filters", "satisfaction", "tags", "steps", "topics", "comments"}
    assert [t["tag"] for t in body["tags"]] == ["inaccurate"]
    response = analyst.get("/api/assistant/insights", {"format": "csv", "table": "tags"})
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [(r["tag"], r["count"]) for r in rows] == [("inaccurate", "12"), ("helpful", "1")]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"table": "bogus"}, "table"),
        ({"format": "csv"}, "table"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-12-01", "until": "2026-11-01"}, "since"),
        ({"version": "policy:99"}, "version"),
    ],
)
def test_bad_filters_are_refused(analyst, world, query, field):
    response = analyst.get("/api/assistant/insights", query)
    assert response.status_code == 400
    assert field in response.content.decode()


def test_the_admin_page_shows_charts_and_tables(admin_client_, world):
    page = admin_client_.get("/admin/feedback/feedback/insights/", {"version": world[1].pk})
    html = page.content.decode()
    assert page.status_code == 200
    assert 'class="rate-lines-chart"' in html
    assert 'class="bars-chart"' in html
    assert "Wrong about cars." in html
    assert 'href="/api/assistant/insights?format=csv&table=tags&amp;version=' in html
    assert "Insights" in admin_client_.get("/admin/feedback/feedback/").content.decode()
