from __future__ import annotations

from django.contrib.auth import get_user_model
from django.test import Client

from feedback import services
from feedback.models import Conversation
from tests.factories import AssistantMessageFactory, ConversationFactory


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_chat_needs_a_login(db):
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert b"Log in" in Client().get("/accounts/login/").content


def test_a_first_visit_opens_a_new_conversation(alice):
    response = logged_in(alice).get("/")
    conversation = Conversation.objects.get(user=alice)
    assert response["Location"] == f"/c/{conversation.id}/"


def test_the_page_ships_htmx_with_its_ws_extension_and_connects_the_socket(alice, answer):
    page = logged_in(alice).get(f"/c/{answer.conversation_id}/").content.decode()
    assert "/static/django_htmx/htmx-2.min.js" in page
    assert "/static/django_htmx/ext/hx-ws-2.min.js" in page
    assert f'ws-connect="/ws/chat/{answer.conversation_id}/"' in page
    assert "Step 3." in page
    assert page.count('aria-label="Good step"') == 3


def test_the_page_shows_the_users_earlier_ratings(alice, answer):
    services.feedback_upsert(user=alice, message_id=answer.id, step_index=2, thumbs="down")
    services.feedback_upsert(user=alice, message_id=answer.id, rating=4, comment="Clear enough")
    page = logged_in(alice).get(f"/c/{answer.conversation_id}/").content.decode()
    assert page.count('class="star on"') == 4
    assert "Clear enough</textarea>" in page
    step = page.split(f'id="step-{answer.id}-2"')[1].split("</div>\n</div>")[0]
    assert 'aria-label="Bad step" aria-pressed="true"' in step
    assert "Your satisfaction: 38% (2 ratings)" in page


def test_another_users_conversation_page_is_404(alice, bob):
    other = ConversationFactory(user=bob)
    assert logged_in(alice).get(f"/c/{other.id}/").status_code == 404


def test_new_conversation_is_a_post(alice):
    client = logged_in(alice)
    assert client.get("/c/new").status_code == 405
    response = client.post("/c/new")
    assert response.status_code == 302
    assert Conversation.objects.filter(user=alice).count() == 1


def test_sign_up_is_off_by_default(db):
    assert Client().get("/accounts/signup/").status_code == 404


def test_sign_up_when_enabled_creates_and_logs_in_the_user(db, settings):
    settings.CHAT_SIGNUP_ENABLED = True
    client = Client()
    response = client.post(
        "/accounts/signup/",
        {"username": "dora", "password1": "a-long-passphrase-9", "password2": "a-long-passphrase-9"},
    )
    assert response.status_code == 302
    assert get_user_model().objects.filter(username="dora").exists()
    assert client.get("/").status_code == 302  # logged in: sent on to a conversation


def test_logout_ends_the_session(alice):
    client = logged_in(alice)
    client.post("/accounts/logout/")
    assert client.get("/")["Location"].startswith("/accounts/login/")


def test_failed_answers_show_their_error_and_no_rating_controls(alice, conversation):
    failed = AssistantMessageFactory(conversation=conversation, status="failed", error="Model not loaded", steps=0)
    page = logged_in(alice).get(f"/c/{conversation.id}/").content.decode()
    assert "The assistant could not answer: Model not loaded" in page
    assert f'id="answer-{failed.id}-feedback"' not in page


def test_the_sockets_fragments_write_numbers_unlocalized(settings):
    """The fragments the chat socket renders are not localized (``{% localize off %}``): numbers in
    them are ids and attribute values, which a thousands separator would break (a step's id, the
    ``step_index`` its buttons send, a ``maxlength``), and localizing each one cost a quarter of a step
    fragment's render. The leaf templates say so themselves, as some are rendered alone (a step's
    feedback after a rating, the composer restored after an error); the satisfaction they confirm,
    text for people, stays localized."""
    from types import SimpleNamespace

    from django.template.loader import render_to_string

    settings.USE_THOUSAND_SEPARATOR = True
    settings.FEEDBACK_CORRECTION_MAX_LENGTH = 12345
    step = SimpleNamespace(index=1234, content="Boil water.", my_feedback=None)
    answer = SimpleNamespace(
        id="a", parent_id="p", status="complete", content="Boil water.", error="", my_feedback=None,
        steps=SimpleNamespace(all=lambda: [step]),
    )  # fmt: skip
    satisfaction = SimpleNamespace(score=0.5, count=1234)
    fragments = {
        "chat/_step_new.html": {"answer": answer, "step": step, "partial": ""},
        "chat/_answer_final.html": {"answer": answer, "siblings": [answer], "prompt_id": "p", "new": False},
        "chat/_answer_new.html": {"answer": answer, "prompt_id": "p"},
        "chat/_step.html": {"answer": answer, "step": step},
    }
    for name, context in fragments.items():
        html = render_to_string(name, context)
        assert 'id="step-a-1234"' in html, name
        assert 'data-index="1234"' in html, name
        assert "1,234" not in html, name
    confirmed = render_to_string(
        "chat/_step_feedback.html",
        {"answer_id": "a", "step": step, "feedback": None, "confirm": True, "satisfaction": satisfaction},
    )
    assert 'id="step-a-1234-feedback"' in confirmed
    assert '"step_index": "1234"' in confirmed
    assert "(1,234 ratings)" in confirmed  # the satisfaction's count, for people
    assert confirmed.count("1,234") == 1
    answer_confirmed = render_to_string(
        "chat/_answer_feedback.html",
        {"answer_id": "a", "answer_text": "x", "feedback": None, "confirm": True, "satisfaction": satisfaction},
    )
    assert 'maxlength="12345"' in answer_confirmed
    assert "12,345" not in answer_confirmed
    assert "(1,234 ratings)" in answer_confirmed
    restored = render_to_string("chat/_error.html", {"message": "Too fast.", "restore": "hi", "max_chars": 12000})
    assert 'maxlength="12000"' in restored
    assert "12,000" not in restored


def test_the_pages_turns_write_numbers_unlocalized(alice, answer, settings):
    """The page's turns, like the socket's fragments, write a step's index as is."""
    settings.USE_THOUSAND_SEPARATOR = True
    answer.steps.filter(index=2).update(index=1234)
    page = logged_in(alice).get(f"/c/{answer.conversation_id}/").content.decode()
    assert f'id="step-{answer.id}-1234"' in page
    assert '"step_index": "1234"' in page
    assert "1,234" not in page
