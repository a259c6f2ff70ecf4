from __future__ import annotations

import pytest

from feedback import services
from feedback.models import Feedback
from tests.factories import AssistantMessageFactory, ConversationFactory, UserFactory


@pytest.fixture
def world(alice):
    for n in range(6):
        user = UserFactory(username=f"rater{n}")
        answer = AssistantMessageFactory(conversation=ConversationFactory(user=user))
        services.feedback_upsert(user=user, message_id=answer.id, thumbs="up", rating=4, comment=f"note {n}")
        services.feedback_upsert(user=user, message_id=answer.id, step_index=1, thumbs="down")
    return Feedback.objects.all()


@pytest.mark.parametrize(
    "page",
    [
        "feedback/feedback",
        "feedback/conversation",
        "feedback/message",
        "feedback/usersatisfaction",
        "feedback/comparison",
        "models_registry/modelversion",
    ],
)
def test_changelists_load_without_n_plus_one(admin_client_, world, page, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):
        response = admin_client_.get(f"/admin/{page}/")
    assert response.status_code == 200


def test_the_feedback_browser_searches_and_filters(admin_client_, world):
    response = admin_client_.get("/admin/feedback/feedback/", {"q": '"note 3"'})
    assert response.context["cl"].result_count == 1
    response = admin_client_.get("/admin/feedback/feedback/", {"thumbs__exact": "down"})
    assert response.context["cl"].result_count == 6


def test_feedback_rows_are_read_only_in_the_admin(admin_client_, world):
    feedback = world.filter(step__isnull=True).first()
    page = admin_client_.get(f"/admin/feedback/feedback/{feedback.pk}/change/")
    assert page.status_code == 200
    assert b'name="rating"' not in page.content
    response = admin_client_.post(f"/admin/feedback/feedback/{feedback.pk}/change/", {"rating": 1})
    assert response.status_code == 403
    assert admin_client_.post(f"/admin/feedback/feedback/{feedback.pk}/delete/", {"post": "yes"}).status_code == 403
    feedback.refresh_from_db()
    assert feedback.rating == 4
    assert admin_client_.get("/admin/feedback/feedback/add/").status_code == 403


def test_a_conversation_shows_its_messages_inline(admin_client_, answer):
    response = admin_client_.get(f"/admin/feedback/conversation/{answer.conversation_id}/change/")
    assert response.status_code == 200
    assert answer.content[:30].encode() in response.content
    message_page = admin_client_.get(f"/admin/feedback/message/{answer.pk}/change/")
    assert b"Step 3." in message_page.content
