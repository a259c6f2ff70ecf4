"""A chat answer's round trips on PostgreSQL. The send (``feedback.chat.send_begin``): one read (the
conversation so far and the running canary) and one write (the user's turn, the answer begun, the
first turn's title), where the ORM path made seven in a transaction. The answer's end
(``_answer_store_final``): one write and one read, where it made seven. What they return is what the
ORM would have held."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext

from feedback import chat
from feedback.models import Conversation, Message
from tests.factories import AssistantMessageFactory, ConversationFactory, ModelVersionFactory, UserMessageFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def as_stored(message: Message) -> dict:
    fields = [f.name for f in Message._meta.concrete_fields]
    return model_to_dict(message, fields=fields) | {"created_at": message.created_at, "id": message.id}


def test_a_send_is_two_statements_and_returns_the_rows_as_stored(alice, settings):
    settings.CHAT_RATE_PER_MINUTE = 1000
    live = ModelVersionFactory(number=3, status="live")
    conversation = ConversationFactory(user=alice, title="Eggs")
    earlier = UserMessageFactory(conversation=conversation, content="How do I boil an egg?")
    AssistantMessageFactory(conversation=conversation, parent=earlier, content="Boil it for 8 minutes.")

    with CaptureQueriesContext(connection) as queries:
        prompt, (history, route, answer) = chat.send_begin(
            user=alice, conversation=conversation, content="  And a duck egg?  ", live_version_id=live.id
        )

    assert len(queries.captured_queries) == 2
    assert history == [
        {"role": "user", "content": "How do I boil an egg?"},
        {"role": "assistant", "content": "Boil it for 8 minutes."},
        {"role": "user", "content": "And a duck egg?"},
    ]
    assert (route.version_id, route.arm) == (None, "")  # no canary: the live version answers
    stored_prompt, stored_answer = Message.objects.get(pk=prompt.pk), Message.objects.get(pk=answer.pk)
    assert as_stored(prompt) == as_stored(stored_prompt)
    assert as_stored(answer) == as_stored(stored_answer)
    assert prompt.heartbeat_at == stored_prompt.heartbeat_at
    assert answer.heartbeat_at == stored_answer.heartbeat_at
    assert (stored_prompt.role, stored_prompt.content, stored_prompt.status) == ("user", "And a duck egg?", "complete")
    assert (stored_answer.parent_id, stored_answer.model_version_id, stored_answer.status, stored_answer.content) == (
        prompt.pk, live.id, "streaming", ""
    )  # fmt: skip
    assert answer.parent is prompt
    assert answer.conversation is conversation
    assert not prompt._state.adding
    assert not answer._state.adding
    ordered = list(Message.objects.filter(conversation=conversation).order_by("created_at", "id"))
    assert [m.pk for m in ordered][-2:] == [prompt.pk, answer.pk]  # the page's and the history's order
    assert Conversation.objects.get(pk=conversation.pk).title == "Eggs"  # a named conversation keeps its name


def test_the_first_send_names_the_conversation_and_a_later_one_does_not_rename_it(alice, settings):
    settings.CHAT_RATE_PER_MINUTE = 1000
    conversation = ConversationFactory(user=alice, title="")
    stale = Conversation.objects.get(pk=conversation.pk)  # another socket's copy, still untitled in memory
    long_question = "How long should I boil an egg for a runny yolk, at sea level, in a small pan?"

    chat.send_begin(user=alice, conversation=conversation, content=long_question, live_version_id=None)
    assert conversation.title == long_question[:60]  # in memory: the socket keeps this object
    chat.send_begin(user=alice, conversation=stale, content="And a duck egg?", live_version_id=None)

    assert Conversation.objects.get(pk=conversation.pk).title == long_question[:60]
    assert stale.title == long_question[:60]  # the stale copy now holds what is stored
    assert Message.objects.filter(conversation=conversation, role="user").count() == 2


def test_a_send_in_a_canary_conversation_is_begun_by_its_arms_version(alice, settings):
    from feedback.arms import draw
    from models_registry.services import canary_start

    settings.CHAT_RATE_PER_MINUTE = 1000
    settings.REGISTRY_FOUR_EYES = False
    live = ModelVersionFactory(number=7, status="live")
    candidate = ModelVersionFactory(number=8, status="approved")
    canary = canary_start(version_id=candidate.id, share=0.5, actor=None)
    routed = {}
    while len(routed) < 2:  # one conversation of each arm
        conversation = ConversationFactory(user=alice)
        with CaptureQueriesContext(connection) as first:
            _, (_, route, answer) = chat.send_begin(
                user=alice, conversation=conversation, content="Eggs?", live_version_id=live.id
            )
        # The first send also stores the conversation's arm (a statement of its own), later ones not.
        assert len(first.captured_queries) == 3
        with CaptureQueriesContext(connection) as later:
            _, (_, again, _) = chat.send_begin(
                user=alice, conversation=conversation, content="And ducks?", live_version_id=live.id
            )
        assert len(later.captured_queries) == 2
        assert again == route
        routed[draw(canary, conversation.pk)] = (conversation, route, answer)

    conversation, route, answer = routed["canary"]
    assert (route.version_id, route.arm) == (candidate.id, "canary")
    assert Message.objects.get(pk=answer.pk).model_version_id == candidate.id
    conversation.refresh_from_db()
    assert (conversation.canary_id, conversation.arm) == (canary.pk, "canary")
    conversation, route, answer = routed["live"]
    assert route.version_id is None
    assert Message.objects.get(pk=answer.pk).model_version_id == live.id
    conversation.refresh_from_db()
    assert (conversation.canary_id, conversation.arm) == (canary.pk, "live")
    # Ended, it routes nothing (``running_canary_row``'s rule, which the read repeats).
    type(canary).objects.filter(pk=canary.pk).update(outcome="promoted")
    for conversation, _, _ in routed.values():
        _, (_, route, answer) = chat.send_begin(
            user=alice, conversation=conversation, content="And geese?", live_version_id=live.id
        )
        assert route.version_id is None
        assert Message.objects.get(pk=answer.pk).model_version_id == live.id


@pytest.mark.parametrize("earlier_shift", [timedelta(0), timedelta(hours=1)], ids=["in order", "clock went back"])
def test_the_history_sent_is_the_one_read_back_from_the_stored_rows(alice, settings, earlier_shift):
    """What the model is sent is what ``history_for`` (the rule the feedback processor trains on)
    reads from the stored conversation once the turn is written, even when an earlier turn was
    stamped later by a server whose clock ran ahead; the new turn and its answer are stamped in order."""
    settings.CHAT_RATE_PER_MINUTE = 1000
    conversation = ConversationFactory(user=alice, title="Eggs")
    earlier = UserMessageFactory(conversation=conversation, content="How do I boil an egg?")
    AssistantMessageFactory(conversation=conversation, parent=earlier, content="Boil it for 8 minutes.")
    Message.objects.filter(conversation=conversation).update(created_at=F("created_at") + earlier_shift)

    prompt, (history, _, answer) = chat.send_begin(
        user=alice, conversation=conversation, content="And a duck egg?", live_version_id=None
    )

    assert history == chat.turns.history_for(prompt=Message.objects.get(pk=prompt.pk))
    assert all(type(turn["role"]) is str for turn in history)  # plain strings, as read from the rows
    assert history[-1] == {"role": "user", "content": "And a duck egg?"}
    assert len(history) == (3 if earlier_shift == timedelta(0) else 1)
    assert prompt.created_at < answer.created_at


def test_an_answers_end_is_two_statements_and_shows_what_the_orm_reads(alice, bob):
    """``_answer_store_final``: the steps left and the answer in one write; the steps, the user's own
    feedback on them and on the answer (given while it streamed), and the answers to its turn in one
    read, the same as ``answer_with_siblings`` reads afterwards."""
    from feedback.models import Feedback, MessageStep

    conversation = ConversationFactory(user=alice)
    answer = AssistantMessageFactory(conversation=conversation, status="streaming", content="", steps=2)
    older = AssistantMessageFactory(conversation=conversation, parent=answer.parent, steps=0)
    AssistantMessageFactory(conversation=conversation, parent=answer.parent, status="failed", steps=0)
    Message.objects.filter(pk=older.pk).update(created_at=answer.created_at - timedelta(seconds=1))
    step_0 = MessageStep.objects.get(message=answer, index=0)
    Feedback.objects.create(user=alice, message=answer, step=step_0, thumbs="up", tags=["clear"])
    Feedback.objects.create(user=alice, message=answer, rating=4, comment="Good.")
    Feedback.objects.create(user=bob, message=answer, step=step_0, thumbs="down")  # not alice's: not shown
    answer = Message.objects.select_related("conversation").get(pk=answer.pk)
    answer.content, answer.status, answer.error = "1. Boil.\n2. Wait.\n3. Eat.", "complete", ""
    answer.token_count, answer.duration_ms, answer.time_to_first_token_ms = 12, 340, 25

    with CaptureQueriesContext(connection) as queries:
        siblings = chat.turns._answer_store_final(answer=answer, first_index=1, steps=["Wait.", "Eat."], shown=True)

    assert len(queries.captured_queries) == 2
    stored = Message.objects.get(pk=answer.pk)
    assert (stored.content, stored.status, stored.token_count, stored.duration_ms, stored.time_to_first_token_ms) == (
        "1. Boil.\n2. Wait.\n3. Eat.", "complete", 12, 340, 25
    )  # fmt: skip
    rows = list(MessageStep.objects.filter(message=answer).order_by("index").values_list("id", "index", "content"))
    assert [content for _, _, content in rows] == ["Step 1.", "Step 2.", "Eat."]  # a step stored earlier is kept
    shown, orm_siblings = chat.turns.answer_with_siblings(conversation=conversation, answer_id=answer.pk)
    assert [(s.id, s.index, s.content) for s in answer.steps.all()] == rows
    assert [s.pk for s in siblings] == [s.pk for s in orm_siblings] == [older.pk, answer.pk]
    assert siblings[1] is answer
    assert as_stored(siblings[0]) == as_stored(orm_siblings[0])  # every field, as the ORM reads it
    for mine, read in zip(answer.steps.all(), shown.steps.all(), strict=True):
        if read.my_feedback is None:
            assert mine.my_feedback is None
        else:
            assert (mine.my_feedback.pk, mine.my_feedback.thumbs, mine.my_feedback.tags) == (
                read.my_feedback.pk, "up", ["clear"]
            )  # fmt: skip
    assert (answer.my_feedback.pk, answer.my_feedback.rating, answer.my_feedback.comment) == (
        shown.my_feedback.pk, 4, "Good."
    )  # fmt: skip


def test_an_answers_end_not_shown_is_one_statement(alice):
    conversation = ConversationFactory(user=alice)
    answer = AssistantMessageFactory(conversation=conversation, status="streaming", content="", steps=0)
    answer.content, answer.status = "Stopped early", "stopped"
    with CaptureQueriesContext(connection) as queries:
        siblings = chat.turns._answer_store_final(answer=answer, first_index=0, steps=["Stopped early"], shown=False)
    assert siblings is None
    assert len(queries.captured_queries) == 1
    assert Message.objects.get(pk=answer.pk).status == "stopped"
    assert list(answer.steps.values_list("index", "content")) == [(0, "Stopped early")]


def test_a_finished_step_is_one_statement_and_returns_its_row(alice):
    from feedback.models import MessageStep

    answer = AssistantMessageFactory(conversation=ConversationFactory(user=alice), status="streaming", steps=1)
    with CaptureQueriesContext(connection) as queries:
        step = chat.turns._step_create(answer=answer, index=1, content="Add the egg.")
    assert len(queries.captured_queries) == 1
    stored = MessageStep.objects.get(message=answer, index=1)
    assert (step.pk, step.message_id, step.content) == (stored.pk, answer.pk, "Add the egg.")
    assert not step._state.adding


def test_a_send_to_a_deleted_conversation_and_the_end_of_a_deleted_answer_are_errors(alice, settings):
    from django.db import DatabaseError

    from feedback.exceptions import NotFound

    settings.CHAT_RATE_PER_MINUTE = 1000
    conversation = ConversationFactory(user=alice)
    answer = AssistantMessageFactory(conversation=conversation, status="streaming", steps=0)
    Message.objects.filter(pk=answer.pk).delete()
    with pytest.raises(DatabaseError):  # as the ORM's save(update_fields=...) says of a row gone
        chat.turns._answer_store_final(answer=answer, first_index=0, steps=[], shown=True)
    Conversation.objects.filter(pk=conversation.pk).delete()
    with pytest.raises(NotFound):
        chat.send_begin(user=alice, conversation=conversation, content="Eggs?", live_version_id=None)
    assert not Message.objects.exists()
