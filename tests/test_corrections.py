"""Corrected answers ("what it should have said"): sent with feedback, through the API and the chat
page; the processor's side is in test_processor.py."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

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


def test_the_chat_page_has_an_edit_box_under_the_answer_holding_its_text_then_the_correction(alice, answer):
    from django.test import Client

    from feedback import services

    client = Client()
    client.force_login(alice)
    page = client.get(f"/c/{answer.conversation_id}/").content.decode()
    box = page.split('<details class="correction">')[1].split("</details>")[0]
    assert '<textarea name="correction" rows="4" maxlength="8000">' in box
    assert "1. Boil water.\n2. Add the egg.\n3. Wait nine minutes.</textarea>" in box

    services.feedback_upsert(user=alice, message_id=answer.id, correction="Boil it for nine minutes.")
    page = client.get(f"/c/{answer.conversation_id}/").content.decode()
    assert '<details class="correction" open>' in page
    assert "Boil it for nine minutes.</textarea>" in page


@pytest.mark.django_db(transaction=True)
async def test_the_edit_box_sends_the_correction_over_the_socket(alice, answer):
    from channels.testing import WebsocketCommunicator
    from django.test import Client

    from rlhf_site.asgi import application

    client = Client()
    await sync_to_async(client.force_login)(alice)
    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver"),
               (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]  # fmt: skip
    communicator = WebsocketCommunicator(application, f"/ws/chat/{answer.conversation_id}/", headers=headers)
    assert (await communicator.connect())[0]
    # What the form sends: its fields as strings.
    await communicator.send_to(
        text_data=json.dumps(
            {"type": "feedback", "message_id": str(answer.id), "correction": "Boil it for nine minutes."}
        )
    )
    reply = await communicator.receive_from()
    await communicator.disconnect()
    assert "Saved." in reply
    assert "Boil it for nine minutes.</textarea>" in reply
    feedback = await sync_to_async(Feedback.objects.get)()
    assert (feedback.correction, feedback.step_id) == ("Boil it for nine minutes.", None)
