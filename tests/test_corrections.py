"""Corrected answers ("what it should have said"): sent with feedback, through the API and the chat
page; the processor's side is in test_processor.py."""

from __future__ import annotations

from feedback.models import Feedback


def post(api, **body):
    return api.post("/api/assistant/feedback", body, format="json")


def test_a_correction_is_stored_with_the_feedback_and_alone_is_enough(api, answer):
    response = post(api, message_id=str(answer.id), correction="  Boil it for nine minutes.  ")
    assert response.status_code == 201, response.content
    assert response.json()["correction"] == "Boil it for nine minutes."
    feedback = Feedback.objects.get()
    assert (feedback.correction, feedback.thumbs, feedback.rating, feedback.step_id) == (
        "Boil it for nine minutes.",
        None,
        None,
        None,
    )
    response = post(api, message_id=str(answer.id), thumbs="down")  # the correction stays
    assert response.json()["correction"] == "Boil it for nine minutes."


def test_a_correction_longer_than_the_setting_is_refused(api, answer, settings):
    settings.FEEDBACK_CORRECTION_MAX_LENGTH = 10
    response = post(api, message_id=str(answer.id), correction="x" * 11)
    assert response.status_code == 400
    assert "FEEDBACK_CORRECTION_MAX_LENGTH" in response.json()["error"]["fields"]["correction"][0]
    assert Feedback.objects.count() == 0


def test_a_correction_is_for_the_whole_answer_not_a_step(api, answer):
    response = post(api, message_id=str(answer.id), step_index=0, correction="Better step.")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "correction_on_step"
    assert Feedback.objects.count() == 0
