"""The chat socket through the real ASGI stack (session auth, origin check), with the policy
replaced by a scripted one: the model server is the boundary we fake here. Serving with the real
bootstrapped model is tested in test_serving.py and in test_chat_live_model.py."""

from __future__ import annotations

import asyncio
import html
import json
import re
import uuid
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.template.loader import render_to_string

from feedback import chat
from feedback.consumers import TokenFrames
from feedback.models import Comparison, Feedback, Message
from models_registry.serving import ServingError
from rlhf_site.asgi import application
from tests.factories import ConversationFactory, ModelVersionFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER = ["Sure", ".\n", "1. Boil", " water.\n", "2. Add", " the egg.\n", "3. Wait", " nine minutes."]


class ScriptedPolicy:
    def __init__(self, version, chunks=ANSWER, delay: float = 0.0, fail_at: int | None = None):
        self.version_id, self.label = version.id, version.label
        self.chunks, self.delay, self.fail_at = chunks, delay, fail_at
        self.seen: list[list[dict[str, str]]] = []

    async def stream(self, messages, *, max_new_tokens=None, options=None, usage=None) -> AsyncIterator[str]:
        self.seen.append(messages)
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise ServingError("The model server went away.")
            await asyncio.sleep(self.delay)
            yield chunk


@pytest.fixture
def policy(monkeypatch):
    version = ModelVersionFactory(number=7)
    scripted = ScriptedPolicy(version)

    async def get_policy():
        return scripted

    monkeypatch.setattr(chat.stream, "get_policy", get_policy)
    monkeypatch.setattr(chat.stream, "served_policy", lambda: scripted, raising=False)  # as once it is loaded
    return scripted


async def connect(conversation, session: str | None, origin: str = "http://testserver"):
    headers = [(b"origin", origin.encode()), (b"host", b"testserver")]
    if session:
        headers.append((b"cookie", f"sessionid={session}".encode()))
    communicator = WebsocketCommunicator(application, f"/ws/chat/{conversation.id}/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def receive_until(communicator, pattern: str, timeout: float = 5) -> list[str]:
    frames = []
    while True:
        frame = await communicator.receive_from(timeout=timeout)
        frames.append(frame)
        if re.search(pattern, frame):
            return frames


async def ask(communicator, content: str) -> list[str]:
    """Send a chat message and collect the frames up to the finished answer."""
    await communicator.send_to(text_data=json.dumps({"type": "send", "content": content}))
    return await receive_until(communicator, FINAL)


def tokens_of(frames: list[str]) -> str:
    pieces = [re.search(r'-live" hx-swap-oob="beforeend">(.*)</div>', f, re.S) for f in frames]
    return "".join(html.unescape(p.group(1)) for p in pieces if p)


FINAL = r'hx-swap-oob="outerHTML"|<article[^>]*data-status="failed"'


async def test_anonymous_users_are_refused(db, alice):
    conversation = await sync_to_async(ConversationFactory)(user=alice)
    _, connected, code = await connect(conversation, None)
    assert (connected, code) == (False, 4401)


async def test_another_users_conversation_is_refused(alice_session):
    other = await sync_to_async(ConversationFactory)(user=await sync_to_async(UserFactory)(username="bob"))
    _, connected, code = await connect(other, alice_session)
    assert (connected, code) == (False, 4404)


async def test_a_foreign_origin_is_refused(conversation, alice_session):
    _, connected, _ = await connect(conversation, alice_session, origin="http://evil.example")
    assert connected is False


async def test_it_streams_tokens_in_order_and_stores_the_answer_and_steps(conversation, alice_session, policy):
    communicator, connected, _ = await connect(conversation, alice_session)
    assert connected
    frames = await ask(communicator, "How do I boil an egg?")
    await communicator.disconnect()

    assert "How do I boil an egg?" in frames[0]
    assert tokens_of(frames) == "".join(ANSWER)
    step_frames = [f for f in frames if '-steps" hx-swap-oob="beforeend"' in f]
    assert len(step_frames) == 3  # "Sure." and steps 1 and 2 finish while streaming; 3 at the end
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    steps = await sync_to_async(lambda: list(answer.steps.values_list("index", "content")))()
    assert steps == [(0, "Sure."), (1, "1. Boil water."), (2, "2. Add the egg."), (3, "3. Wait nine minutes.")]
    assert answer.status == "complete"
    assert answer.content == "".join(ANSWER)
    assert answer.model_version_id == policy.version_id
    assert answer.token_count == len(ANSWER)
    assert answer.time_to_first_token_ms is not None
    assert answer.duration_ms is not None
    assert policy.seen == [[{"role": "user", "content": "How do I boil an egg?"}]]
    assert "3. Wait nine minutes." in frames[-1]
    assert "Regenerate" in frames[-1]


async def test_socket_feedback_lands_like_api_feedback(conversation, alice_session, policy, alice):
    communicator, _, _ = await connect(conversation, alice_session)
    await ask(communicator, "Eggs?")
    answer = await sync_to_async(Message.objects.get)(role="assistant")

    # What the page's buttons send: strings from hx-vals and form fields.
    await communicator.send_to(
        text_data=json.dumps({"type": "feedback", "message_id": str(answer.id), "step_index": "1", "thumbs": "down"})
    )
    step_reply = await communicator.receive_from()
    await communicator.send_to(
        text_data=json.dumps(
            {"type": "feedback", "message_id": str(answer.id), "rating": "4", "comment": "Clear.", "tags": "clear"}
        )
    )
    message_reply = await communicator.receive_from()
    await communicator.send_to(text_data=json.dumps({"type": "feedback", "message_id": str(answer.id), "rating": "5"}))
    await communicator.receive_from()
    await communicator.disconnect()

    assert 'aria-pressed="true"' in step_reply
    assert "Saved." in step_reply
    assert "Your satisfaction is now 38%" in message_reply  # mean of the step's 0 and the answer's 0.75
    rows = await sync_to_async(lambda: list(Feedback.objects.order_by("id").values_list(
        "user__username", "step__index", "thumbs", "rating", "comment", "tags")))()  # fmt: skip
    assert rows == [("alice", 1, "down", None, "", []), ("alice", None, None, 5, "Clear.", ["clear"])]

    # The REST API sees and updates the very same rows.
    from rest_framework.test import APIClient

    api = APIClient()
    await sync_to_async(api.force_authenticate)(alice)
    listed = await sync_to_async(api.get)("/api/assistant/feedback", {"message_id": str(answer.id)})
    assert {(r["step_index"], r["rating"]) for r in listed.json()["results"]} == {(1, None), (None, 5)}
    updated = await sync_to_async(api.post)(
        "/api/assistant/feedback", {"message_id": str(answer.id), "thumbs": "up"}, format="json"
    )
    assert updated.status_code == 200
    assert await sync_to_async(Feedback.objects.count)() == 2


async def test_regenerate_makes_a_sibling_and_compare_stores_a_comparison(conversation, alice_session, policy):
    communicator, _, _ = await connect(conversation, alice_session)
    await ask(communicator, "Eggs?")
    first = await sync_to_async(Message.objects.get)(role="assistant")

    await communicator.send_to(text_data=json.dumps({"type": "regenerate", "message_id": str(first.id)}))
    frames = await receive_until(communicator, FINAL)
    assert "A is better" in frames[-1]
    second = await sync_to_async(Message.objects.exclude(id=first.id).get)(role="assistant")
    assert second.parent_id == first.parent_id

    await communicator.send_to(text_data=json.dumps({
        "type": "compare", "prompt_message_id": str(first.parent_id),
        "chosen_message_id": str(second.id), "rejected_message_id": str(first.id)}))  # fmt: skip
    reply = await communicator.receive_from()
    await communicator.disconnect()
    assert "your preference is recorded" in reply
    comparison = await sync_to_async(Comparison.objects.get)()
    assert (comparison.chosen_id, comparison.rejected_id, comparison.is_tie) == (second.id, first.id, False)
    # The regenerated answer was asked with the same history as the first.
    assert policy.seen[0] == policy.seen[1]


async def test_stop_cancels_generation_and_stores_what_was_produced(conversation, alice_session, policy, monkeypatch):
    policy.delay = 0.05
    stores = []
    store = chat.stream._answer_store_final

    def recorded(**kwargs):
        stores.append(kwargs["shown"])
        return store(**kwargs)

    monkeypatch.setattr(chat.stream, "_answer_store_final", recorded)
    communicator, _, _ = await connect(conversation, alice_session)
    await communicator.send_to(text_data=json.dumps({"type": "send", "content": "Eggs?"}))
    await receive_until(communicator, r"-live\" hx-swap-oob=\"beforeend\">1\. Boil")
    await communicator.send_to(text_data=json.dumps({"type": "stop"}))
    frames = await receive_until(communicator, FINAL)
    await communicator.disconnect()

    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert answer.status == "stopped"
    assert answer.content.startswith("Sure.\n1. Boil")
    assert len(answer.content) < len("".join(ANSWER))
    assert "Stopped." in frames[-1]
    assert stores == [False]  # the stop's handler reads the answer for the page: its store does not


async def test_a_failed_read_back_still_shows_the_stored_answer(conversation, alice_session, policy, monkeypatch):
    """The answer is stored before what the page shows is read back in the same trip; if that read
    fails the socket reads it again."""
    from django.db import DatabaseError

    def broken(*args, **kwargs):
        raise DatabaseError("the connection went away")

    monkeypatch.setattr(chat.turns, "_answer_read_back", broken)  # the ORM's (SQLite)
    monkeypatch.setattr(chat.statements, "answer_read_back", broken)  # PostgreSQL's
    communicator, _, _ = await connect(conversation, alice_session)
    frames = await ask(communicator, "Eggs?")
    await communicator.disconnect()

    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert answer.status == "complete"
    assert 'data-status="complete"' in frames[-1]
    assert f'id="step-{answer.id}-3"' in frames[-1]


async def test_closing_the_socket_stops_generation_and_keeps_the_partial_answer(conversation, alice_session, policy):
    policy.delay = 0.05
    communicator, _, _ = await connect(conversation, alice_session)
    await communicator.send_to(text_data=json.dumps({"type": "send", "content": "Eggs?"}))
    await receive_until(communicator, r"-live\" hx-swap-oob=\"beforeend\">\.")
    await communicator.disconnect()

    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert answer.status == "stopped"
    assert answer.content.startswith("Sure")


async def test_a_serving_failure_is_stored_and_shown(conversation, alice_session, policy):
    policy.fail_at = 3
    communicator, _, _ = await connect(conversation, alice_session)
    frames = await ask(communicator, "Eggs?")
    await communicator.disconnect()

    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert (answer.status, answer.error) == ("failed", "The model server went away.")
    assert "The assistant could not answer: The model server went away." in frames[-1]


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("not json", "That was not valid JSON."),
        ("[1, 2]", "Each message must be a JSON object with a &#x27;type&#x27;."),
        ('{"type": "dance"}', "Unknown message type &#x27;dance&#x27;."),
        ('{"type": "send"}', "Type a message first."),
        ('{"type": "send", "content": "   "}', "Type a message first."),
        ('{"type": "feedback", "message_id": "nope", "thumbs": "up"}', "message_id: Must be a valid UUID."),
        ('{"type": "regenerate", "message_id": "00000000-0000-0000-0000-000000000000"}', "Answer not found."),
    ],
)
async def test_bad_payloads_get_an_error_and_the_socket_stays_open(conversation, alice_session, policy, frame, error):
    communicator, _, _ = await connect(conversation, alice_session)
    await communicator.send_to(text_data=frame)
    reply = await communicator.receive_from()
    assert 'id="chat-errors"' in reply
    assert error in reply
    await ask(communicator, "Still there?")
    await communicator.disconnect()


async def test_a_rating_out_of_range_over_the_socket_is_refused(conversation, alice_session, policy):
    communicator, _, _ = await connect(conversation, alice_session)
    await ask(communicator, "Eggs?")
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    await communicator.send_to(text_data=json.dumps({"type": "feedback", "message_id": str(answer.id), "rating": "9"}))
    reply = await communicator.receive_from()
    await communicator.disconnect()
    assert "rating: Ensure this value is less than or equal to 5." in html.unescape(reply)
    assert not await sync_to_async(Feedback.objects.exists)()


async def test_messages_over_the_length_limit_are_refused(conversation, alice_session, policy, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    communicator, _, _ = await connect(conversation, alice_session)
    await communicator.send_to(text_data=json.dumps({"type": "send", "content": "x" * 11}))
    reply = await communicator.receive_from()
    await communicator.disconnect()
    assert "Messages are limited to 10 characters; this one has 11." in reply
    assert not await sync_to_async(Message.objects.exists)()


async def test_generation_is_rate_limited_per_user(conversation, alice_session, policy, settings):
    settings.CHAT_RATE_PER_MINUTE = 1
    communicator, _, _ = await connect(conversation, alice_session)
    await ask(communicator, "One")
    await communicator.send_to(text_data=json.dumps({"type": "send", "content": "Two <b>&"}))
    reply = await communicator.receive_from()
    await communicator.disconnect()
    assert "You are sending messages too fast" in reply
    assert await sync_to_async(Message.objects.filter(role="user").count)() == 1
    # The page empties its composer on sending; the refused text goes back into it.
    restored = r'<textarea id="composer-text"[^>]*hx-swap-oob="true"[^>]*>\nTwo &lt;b&gt;&amp;</textarea>'
    assert re.search(restored, reply, re.S)


async def test_a_second_send_while_streaming_is_refused(conversation, alice_session, policy):
    policy.delay = 0.05
    communicator, _, _ = await connect(conversation, alice_session)
    await communicator.send_to(text_data=json.dumps({"type": "send", "content": "One"}))
    await receive_until(communicator, r"-answers\" hx-swap-oob")
    await communicator.send_to(text_data=json.dumps({"type": "send", "content": "Two"}))
    frames = await receive_until(communicator, "chat-errors")
    assert "Wait for the answer to finish, or press Stop." in frames[-1]
    assert re.search(r'<textarea id="composer-text"[^>]*>\nTwo</textarea>', frames[-1])
    await receive_until(communicator, FINAL)
    await communicator.disconnect()


async def test_no_live_policy_gives_a_failed_answer_with_a_clear_message(conversation, alice_session, monkeypatch):
    async def no_policy():
        raise ServingError("No policy model is live yet; an operator must deploy one.")

    monkeypatch.setattr(chat.stream, "get_policy", no_policy)
    communicator, _, _ = await connect(conversation, alice_session)
    frames = await ask(communicator, "Hello?")
    await communicator.disconnect()
    assert "No policy model is live yet" in frames[-1]
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert answer.status == "failed"


async def test_an_unexpected_generation_error_is_stored_as_failed(conversation, alice_session, policy, monkeypatch):
    async def broken(messages, *, max_new_tokens=None, options=None, usage=None):
        yield "Sure"
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(policy, "stream", broken)
    communicator, _, _ = await connect(conversation, alice_session)
    frames = await ask(communicator, "Eggs?")
    await communicator.disconnect()

    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert (answer.status, answer.content) == ("failed", "Sure")
    assert answer.error == "The answer could not be generated; the error has been logged."
    assert "CUDA" not in frames[-1]


@pytest.fixture
def trips(monkeypatch, policy):
    from tests.helpers import count_database_trips

    return count_database_trips(monkeypatch, policy)


async def test_a_send_asks_the_model_after_one_database_trip(conversation, alice_session, policy, trips):
    """The rate limit, the user's turn, the history, the arm and the answer's row: one trip before the
    model is asked (there were two), for a send and for a regenerate."""
    communicator, _, _ = await connect(conversation, alice_session)
    trips.made = 0
    frames = await ask(communicator, "Eggs?")
    first = await sync_to_async(Message.objects.get)(role="assistant")
    await communicator.send_to(text_data=json.dumps({"type": "regenerate", "message_id": str(first.id)}))
    at_regenerate = trips.made
    frames += await receive_until(communicator, FINAL)
    await communicator.disconnect()

    assert trips.when_asked == [1, at_regenerate + 1]
    second = await sync_to_async(Message.objects.exclude(id=first.id).get)(role="assistant")
    assert (first.status, second.status, second.parent_id) == ("complete", "complete", first.parent_id)
    assert "Eggs?" in frames[0]  # the turn, then the answer's start
    assert "-answers" in frames[1]


async def test_the_answer_is_stored_and_shown_after_one_last_trip(conversation, alice_session, policy, trips):
    """Storing the answer as it ended and reading what the page shows of it (its steps, the answers to
    the same turn) is one trip (there were two): a send makes one trip, one per finished step written
    while the answer streams, and one at the end."""
    communicator, _, _ = await connect(conversation, alice_session)
    trips.made = 0
    frames = await ask(communicator, "Eggs?")
    await communicator.disconnect()

    answer = await sync_to_async(Message.objects.get)(role="assistant")
    steps = await sync_to_async(list)(answer.steps.order_by("index"))
    assert [s.content for s in steps] == ["Sure.", "1. Boil water.", "2. Add the egg.", "3. Wait nine minutes."]
    assert trips.made == 1 + (len(steps) - 1) + 1
    final = frames[-1]
    assert 'hx-swap-oob="outerHTML"' in final
    assert 'data-status="complete"' in final
    for step in steps:  # every step with its feedback buttons, the last one stored in the final trip
        assert f'id="step-{answer.id}-{step.index}"' in final
        assert f'"step_index": "{step.index}"' in final
    assert "Which answer is better?" not in final  # one answer to the turn: nothing to compare


async def test_a_regenerated_answer_is_shown_with_the_compare_form(conversation, alice_session, policy, trips):
    communicator, _, _ = await connect(conversation, alice_session)
    await ask(communicator, "Eggs?")
    first = await sync_to_async(Message.objects.get)(role="assistant")
    trips.made = 0
    await communicator.send_to(text_data=json.dumps({"type": "regenerate", "message_id": str(first.id)}))
    frames = await receive_until(communicator, FINAL)
    await communicator.disconnect()

    second = await sync_to_async(Message.objects.exclude(id=first.id).get)(role="assistant")
    assert trips.made == 1 + 3 + 1  # begin, the three finished steps, the end
    assert f'id="turn-{first.parent_id}-compare"' in frames[-1]
    assert f'"chosen_message_id": "{first.id}", "rejected_message_id": "{second.id}"' in frames[-1]


async def test_a_step_rated_while_the_answer_streams_stays_rated_when_it_ends(conversation, alice_session, policy):
    """The final fragment replaces the streamed steps: it shows the rating given meanwhile."""
    policy.delay = 0.05
    communicator, _, _ = await connect(conversation, alice_session)
    await communicator.send_to(text_data=json.dumps({"type": "send", "content": "Eggs?"}))
    await receive_until(communicator, r'class="step" id="step-')
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    rating = {"type": "feedback", "message_id": str(answer.id), "step_index": "0", "thumbs": "up"}
    await communicator.send_to(text_data=json.dumps(rating))
    frames = await receive_until(communicator, FINAL)
    await communicator.disconnect()

    final = frames[-1]
    assert 'data-status="complete"' in final
    step_0 = final.split(f'id="step-{answer.id}-0-feedback"', 1)[1].split("</div>", 1)[0]
    assert re.search(r'aria-label="Good step" aria-pressed="true"', step_0)
    step_1 = final.split(f'id="step-{answer.id}-1-feedback"', 1)[1].split("</div>", 1)[0]
    assert 'aria-pressed="true"' not in step_1


async def test_a_failure_beginning_the_answer_stores_neither_the_turn_nor_the_answer(
    conversation, alice_session, policy, monkeypatch
):
    """The user's turn and its answer begun are stored together: no turn is left without an answer.
    Here the answer's row is refused by the database itself (its version does not exist), after the
    turn's was written."""
    monkeypatch.setattr(chat.stream, "live_version_id", lambda: 2**31 - 1)
    communicator, _, _ = await connect(conversation, alice_session)
    await communicator.send_to(text_data=json.dumps({"type": "send", "content": "Eggs?"}))
    reply = await communicator.receive_from()
    await communicator.disconnect()
    assert "Something went wrong on our side" in reply
    assert re.search(r'<textarea id="composer-text"[^>]*>\nEggs\?</textarea>', reply)  # the text comes back
    assert not await sync_to_async(Message.objects.exists)()
    assert policy.seen == []


async def test_a_generation_cancelled_before_its_first_step_stores_its_answer_stopped(conversation, alice, policy):
    """The guard for a task that asyncio never ran: its answer, begun, must not stay streaming."""
    from feedback.consumers import ChatConsumer

    _, begun = await sync_to_async(chat.send_begin)(
        user=alice, conversation=conversation, content="Eggs?", live_version_id=None
    )
    consumer = ChatConsumer()
    consumer.generation, consumer.unstarted = None, None
    consumer._start_generation(begun)
    assert await consumer._cancel_generation()  # before the loop ran the task
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert (answer.status, answer.content) == ("stopped", "")
    assert policy.seen == []


async def test_the_first_message_names_the_conversation_and_later_ones_do_not(alice, alice_session, policy):
    conversation = await sync_to_async(ConversationFactory)(user=alice, title="")
    communicator, _, _ = await connect(conversation, alice_session)
    await ask(communicator, "How do I boil an egg?")
    await ask(communicator, "And a duck egg?")
    await communicator.disconnect()
    await sync_to_async(conversation.refresh_from_db)()
    assert conversation.title == "How do I boil an egg?"


async def test_a_socket_gone_before_its_turn_is_shown_stores_the_begun_answer_stopped(
    conversation, alice_session, policy, monkeypatch
):
    from feedback.consumers import ChatConsumer

    send_html = ChatConsumer.send_html

    async def gone(self, template, context):
        if template == "chat/_turn_new.html":
            raise ConnectionResetError("the socket went")
        await send_html(self, template, context)

    monkeypatch.setattr(ChatConsumer, "send_html", gone)
    communicator, _, _ = await connect(conversation, alice_session)
    await communicator.send_to(text_data=json.dumps({"type": "send", "content": "Eggs?"}))
    await receive_until(communicator, "chat-errors")
    await communicator.disconnect()
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert (answer.status, answer.content) == ("stopped", "")
    assert policy.seen == []


# --- Canary arms ---------------------------------------------------------------------------------


@pytest.fixture
def canary_policies(monkeypatch, settings):
    """A live policy:7 and a canary policy:8 at half the new conversations, each scripted to say
    which it is."""
    from models_registry.services import canary_start

    settings.REGISTRY_FOUR_EYES = False
    live = ModelVersionFactory(number=7, status="live")
    candidate = ModelVersionFactory(number=8, status="approved")
    canary = canary_start(version_id=candidate.id, share=0.5, actor=None)
    scripted = {
        live.id: ScriptedPolicy(live, chunks=["1. Live", " answer."]),
        candidate.id: ScriptedPolicy(candidate, chunks=["1. Canary", " answer."]),
    }

    async def get_policy():
        return scripted[live.id]

    async def get_policy_for(version_id):
        return scripted[version_id]

    monkeypatch.setattr(chat.stream, "get_policy", get_policy)
    monkeypatch.setattr(chat.stream, "get_policy_for", get_policy_for)
    return canary, live, candidate


def conversation_in_arm(user, canary, arm: str):
    from feedback.arms import draw

    while True:  # the draw is a hash of the ids: a few tries find one of each arm
        conversation = ConversationFactory(user=user)
        if draw(canary, conversation.id) == arm:
            return conversation


async def test_a_canary_conversation_sticks_to_its_arm_and_regenerate_asks_the_other_blind(
    alice, alice_session, canary_policies
):
    canary, live, candidate = canary_policies
    conversation = await sync_to_async(conversation_in_arm)(alice, canary, "canary")
    communicator, _, _ = await connect(conversation, alice_session)

    first_frames = await ask(communicator, "Eggs?")
    await ask(communicator, "And ducks?")  # the same arm again
    first = await sync_to_async(Message.objects.filter(role="assistant").order_by("created_at").first)()
    await communicator.send_to(text_data=json.dumps({"type": "regenerate", "message_id": str(first.id)}))
    regenerated_frames = await receive_until(communicator, FINAL)
    other = await sync_to_async(Message.objects.get)(parent_id=first.parent_id, model_version_id=live.id)
    await communicator.send_to(text_data=json.dumps({
        "type": "compare", "prompt_message_id": str(first.parent_id),
        "chosen_message_id": str(first.id), "rejected_message_id": str(other.id)}))  # fmt: skip
    await communicator.receive_from()
    await communicator.disconnect()

    versions = await sync_to_async(list)(
        Message.objects.filter(role="assistant").order_by("created_at").values_list("model_version_id", flat=True)
    )
    assert versions == [candidate.id, candidate.id, live.id]
    await sync_to_async(conversation.refresh_from_db)()
    assert (conversation.canary_id, conversation.arm) == (canary.id, "canary")
    assert conversation.arm_assigned_at is not None
    # A direct online A/B vote between the two arms...
    comparison = await sync_to_async(Comparison.objects.select_related("chosen", "rejected").get)()
    assert (comparison.chosen.model_version_id, comparison.rejected.model_version_id) == (candidate.id, live.id)
    # ...blind: nothing on the page says which version wrote which answer.
    for frame in [*first_frames, *regenerated_frames]:
        assert "policy:" not in frame


async def test_a_live_arm_conversation_is_answered_by_the_live_version(alice, alice_session, canary_policies):
    canary, live, _ = canary_policies
    conversation = await sync_to_async(conversation_in_arm)(alice, canary, "live")
    communicator, _, _ = await connect(conversation, alice_session)
    await ask(communicator, "Eggs?")
    await communicator.disconnect()
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert answer.model_version_id == live.id
    await sync_to_async(conversation.refresh_from_db)()
    assert conversation.arm == "live"


async def test_a_conversation_older_than_the_canary_stays_on_live(alice, alice_session, canary_policies):
    from datetime import timedelta

    canary, live, _ = canary_policies
    conversation = await sync_to_async(ConversationFactory)(user=alice)
    await sync_to_async(type(conversation).objects.filter(id=conversation.id).update)(
        created_at=canary.started_at - timedelta(minutes=5)
    )
    communicator, _, _ = await connect(conversation, alice_session)
    await ask(communicator, "Eggs?")
    await communicator.disconnect()
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert answer.model_version_id == live.id
    await sync_to_async(conversation.refresh_from_db)()
    assert conversation.arm == ""


@pytest.mark.django_db
def test_routing_an_answer_reads_the_canary_without_joining_its_versions(alice, canary_policies):
    """``arms.route`` runs at every answer's start: one query, no join to the versions' columns (three
    times the cost), and a conversation's first answer during a canary draws and stores its arm."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from feedback import arms

    canary, _live, candidate = canary_policies
    conversation = conversation_in_arm(alice, canary, "canary")
    with CaptureQueriesContext(connection) as queries:
        route = arms.route(conversation=conversation)
    assert route == arms.Route(candidate.id, "canary")
    assert "JOIN" not in queries.captured_queries[0]["sql"]
    assert len(queries.captured_queries) == 2  # the canary, then the arm stored on the conversation
    conversation.refresh_from_db()
    assert (conversation.canary_id, conversation.arm) == (canary.id, "canary")


# --- Token frames --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text", ["Boil", " water.\n", "<script>alert(\"x\")</script> & 'q'", "", "é ✓ \u2028", "{{ text }}"]
)
def test_a_token_frame_is_the_token_template_rendered(text):
    answer = Message(id=uuid.uuid4())
    frames = TokenFrames(answer)
    assert frames.parts is not None  # filled in, not rendered
    assert frames.frame(text) == render_to_string("chat/_token.html", {"answer": answer, "text": text})


def test_a_token_template_whose_text_cannot_be_found_is_rendered_each_time(monkeypatch):
    import feedback.consumers as consumers

    answer = Message(id=uuid.uuid4())
    rendered = consumers.render_to_string

    def no_text(name: str, context: dict) -> str:  # a template that does not show the text
        return rendered(name, {**context, "text": ""})

    monkeypatch.setattr(consumers, "render_to_string", no_text)
    frames = TokenFrames(answer)
    assert frames.parts is None
    monkeypatch.setattr(consumers, "render_to_string", rendered)
    assert frames.frame("<b>") == render_to_string("chat/_token.html", {"answer": answer, "text": "<b>"})
