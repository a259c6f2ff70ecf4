"""Answers whose server process died mid-answer (``feedback.heartbeat``): a streaming answer is marked
alive while it streams; the reaper stores one silent for CHAT_STALE_AFTER_SECONDS as failed, with the
steps stored before, and leaves live and ended answers alone. The drill with a real server process
killed mid-answer is in tests/e2e/test_fault_drills.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from feedback import chat, heartbeat
from feedback.models import Message, MessageStep
from feedback.tasks import stale_answers_reap_task
from tests.factories import AssistantMessageFactory, ConversationFactory, ModelVersionFactory, UserMessageFactory
from tests.test_chat_consumer import ScriptedPolicy

pytestmark = pytest.mark.django_db(transaction=True)


def streaming_answer(conversation, *, age_s: float, beat_age_s: float | None = None, texts=(), status="streaming"):
    """An answer ``age_s`` old, last marked alive ``beat_age_s`` ago (None: never), with these steps."""
    answer = AssistantMessageFactory(conversation=conversation, status=status, content="", steps=0)
    now = timezone.now()
    beat = None if beat_age_s is None else now - timedelta(seconds=beat_age_s)
    Message.objects.filter(pk=answer.pk).update(created_at=now - timedelta(seconds=age_s), heartbeat_at=beat)
    for index, text in enumerate(texts):
        MessageStep.objects.create(message=answer, index=index, content=text)
    return answer


def test_the_reaper_fails_silent_streaming_answers_with_their_stored_steps_and_spares_the_rest(alice, settings):
    settings.CHAT_STALE_AFTER_SECONDS = 120
    conversation = ConversationFactory(user=alice)
    dead = streaming_answer(conversation, age_s=600, texts=["Sure.", "1. Boil water."])
    dead_after_beats = streaming_answer(conversation, age_s=900, beat_age_s=300)
    beating = streaming_answer(conversation, age_s=900, beat_age_s=10, texts=["Sure."])
    young = streaming_answer(conversation, age_s=5)
    ended = streaming_answer(conversation, age_s=600, status="complete")
    ended.content = "Done."
    ended.save(update_fields=["content"])

    assert stale_answers_reap_task() == 2

    rows = {m.pk: m for m in Message.objects.filter(role="assistant")}
    assert (rows[dead.pk].status, rows[dead.pk].content) == ("failed", "Sure.\n\n1. Boil water.")
    assert rows[dead.pk].error == heartbeat.REAPED_ERROR
    assert list(rows[dead.pk].steps.values_list("content", flat=True)) == ["Sure.", "1. Boil water."]  # kept
    assert (rows[dead_after_beats.pk].status, rows[dead_after_beats.pk].content) == ("failed", "")
    assert (rows[beating.pk].status, rows[beating.pk].error) == ("streaming", "")
    assert rows[young.pk].status == "streaming"
    assert (rows[ended.pk].status, rows[ended.pk].content, rows[ended.pk].error) == ("complete", "Done.", "")
    assert heartbeat.stale_answers_reap() == []  # nothing left to reap


def test_a_heartbeat_landing_while_the_reaper_reads_keeps_the_answer_streaming(alice, monkeypatch):
    """The reaper writes only if the answer is still silent: a beat between its read and its write wins."""
    answer = streaming_answer(ConversationFactory(user=alice), age_s=600, texts=["Sure."])

    class BeatFirst:  # the answer's process marks it alive while the reaper reads its steps
        class objects:  # stands in for the model's manager
            @staticmethod
            def filter(**kwargs):
                heartbeat.answer_beat(answer_id=answer.pk)
                return MessageStep.objects.filter(**kwargs)

    monkeypatch.setattr(heartbeat, "MessageStep", BeatFirst)
    assert heartbeat.stale_answers_reap(stale_after=timedelta(seconds=120)) == []
    answer.refresh_from_db()
    assert (answer.status, answer.content, answer.error) == ("streaming", "", "")
    assert answer.heartbeat_at is not None


async def test_a_streaming_answer_is_marked_alive_so_the_reaper_spares_it_until_it_ends(alice, settings, monkeypatch):
    settings.CHAT_HEARTBEAT_SECONDS = 0.1
    prompt = await sync_to_async(UserMessageFactory)(conversation__user=alice)
    version = await sync_to_async(ModelVersionFactory)(number=7)
    scripted = ScriptedPolicy(version, chunks=["Sure.\n", "1. Boil", " water.\n", "2. Add", " tea."], delay=0.35)

    async def get_policy():
        return scripted

    monkeypatch.setattr(chat.stream, "get_policy", get_policy)

    async def consume():
        return [event async for event in chat.answer_stream(prompt=prompt)]

    task = asyncio.create_task(consume())
    await asyncio.sleep(1.2)  # the answer is 1.2 s old; its last sign of life about 0.1 s
    reaped_midway = await sync_to_async(heartbeat.stale_answers_reap)(stale_after=timedelta(seconds=0.8))
    events = await task

    assert reaped_midway == []
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert events[-1].kind == "end"
    assert (answer.status, answer.content) == ("complete", "Sure.\n1. Boil water.\n2. Add tea.")
    assert answer.heartbeat_at is not None
    assert answer.heartbeat_at > answer.created_at + timedelta(seconds=1)
    # The beats stopped with the stream: nothing writes the row any more.
    last = answer.heartbeat_at
    await asyncio.sleep(0.3)
    await sync_to_async(answer.refresh_from_db)()
    assert answer.heartbeat_at == last
    # And without the beats, the same answer would have been reaped midway.
    await sync_to_async(Message.objects.filter(pk=answer.pk).update)(status="streaming", heartbeat_at=None)
    assert await sync_to_async(heartbeat.stale_answers_reap)(stale_after=timedelta(seconds=0.8)) == [answer.pk]


async def test_an_answer_closed_while_its_start_is_handled_is_stored_stopped_and_stops_beating(
    alice, settings, monkeypatch
):
    """A stop or a closed socket while the caller handles the ``start`` event (the page's new answer
    being sent): the answer is stored stopped at once, not left streaming for the reaper."""
    settings.CHAT_HEARTBEAT_SECONDS = 0.05
    prompt = await sync_to_async(UserMessageFactory)(conversation__user=alice)
    version = await sync_to_async(ModelVersionFactory)(number=7)

    async def get_policy():
        return ScriptedPolicy(version)

    monkeypatch.setattr(chat.stream, "get_policy", get_policy)
    events = chat.answer_stream(prompt=prompt)
    assert (await anext(events)).kind == "start"
    await asyncio.sleep(0.2)  # beating meanwhile
    await events.aclose()

    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert (answer.status, answer.content) == ("stopped", "")
    last = answer.heartbeat_at
    assert last is not None
    await asyncio.sleep(0.3)
    await sync_to_async(answer.refresh_from_db)()
    assert answer.heartbeat_at == last


@pytest.mark.django_db(transaction=False)
def test_beat_runs_the_reaper_on_its_setting():
    from django.conf import settings

    from rlhf_site.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["reap-stale-answers"]
    assert entry == {"task": "feedback.tasks.stale_answers_reap", "schedule": float(settings.CHAT_REAP_EVERY_SECONDS)}
    app.loader.import_default_modules()  # what a worker does at start: autodiscovered tasks modules
    assert app.tasks[entry["task"]].run is stale_answers_reap_task.run


def test_a_reaper_whose_clock_runs_ahead_spares_an_answer_beaten_just_now(alice, monkeypatch):
    """The beat and the silence are measured on the database's clock: a worker whose clock is ten
    minutes ahead of the server's does not reap a live answer."""
    answer = streaming_answer(ConversationFactory(user=alice), age_s=5)
    assert heartbeat.answer_beat(answer_id=answer.pk)
    ahead = timezone.now() + timedelta(minutes=10)
    monkeypatch.setattr(timezone, "now", lambda: ahead)

    assert heartbeat.stale_answers_reap(stale_after=timedelta(seconds=120)) == []
    answer.refresh_from_db()
    assert answer.status == "streaming"


def test_a_server_whose_clock_runs_behind_still_beats_its_answers_alive(alice, monkeypatch):
    """A beat from a server ten minutes behind is stamped with the database's time, not its own."""
    answer = streaming_answer(ConversationFactory(user=alice), age_s=600)  # long, but still streaming
    behind = timezone.now() - timedelta(minutes=10)
    with monkeypatch.context() as patched:
        patched.setattr(timezone, "now", lambda: behind)
        assert heartbeat.answer_beat(answer_id=answer.pk)

    assert heartbeat.stale_answers_reap(stale_after=timedelta(seconds=120)) == []
    answer.refresh_from_db()
    assert answer.status == "streaming"
    assert abs(answer.heartbeat_at - timezone.now()) < timedelta(seconds=60)


def test_an_answer_begun_by_a_server_whose_clock_runs_behind_is_not_reaped_before_its_first_beat(alice, monkeypatch):
    """Its row is stamped by the database when inserted, so its creation time by the server's clock
    (ten minutes behind here) does not make it look silent."""
    conversation = ConversationFactory(user=alice)
    behind = timezone.now() - timedelta(minutes=10)
    with monkeypatch.context() as patched:
        patched.setattr(timezone, "now", lambda: behind)
        begun = chat.send_begin(user=alice, conversation=conversation, content="Eggs?", live_version_id=None)
    answer = begun[1][2]

    assert answer.heartbeat_at is not None  # read back from the insert
    assert heartbeat.stale_answers_reap(stale_after=timedelta(seconds=120)) == []
    answer.refresh_from_db()
    assert answer.status == "streaming"
