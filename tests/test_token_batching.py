"""Streaming at in-process speed (issue 13, point 2): tokens that come within a few milliseconds go as
one frame / event (``feedback.chat.tokens_batched``), and the async code's database calls run on a
pool of threads rather than queueing behind one (``core.asyncdb``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async

from core.asyncdb import db_async
from feedback import chat
from feedback.models import Message
from tests.factories import ModelVersionFactory
from tests.test_chat_consumer import ANSWER, FINAL, ScriptedPolicy, connect, receive_until, tokens_of


class Source:
    """A scripted ``answer_stream``: (seconds to wait, event) pairs; records how it ended."""

    def __init__(self, script: list[tuple[float, chat.ChatEvent]]):
        self.script = script
        self.ended = ""

    async def events(self):
        try:
            for wait, event in self.script:
                await asyncio.sleep(wait)
                yield event
            self.ended = "done"
        except asyncio.CancelledError:
            self.ended = "cancelled"
            raise
        except GeneratorExit:
            self.ended = "closed"
            raise


ANSWER_ROW = Message(role="assistant", content="")


def token(text: str) -> chat.ChatEvent:
    return chat.ChatEvent("token", ANSWER_ROW, text=text)


async def collect(source: Source, window_ms: float) -> list[tuple[str, str]]:
    return [(e.kind, e.text) async for e in chat.tokens_batched(source.events(), window_ms=window_ms)]


async def test_tokens_close_together_go_as_one_the_first_at_once_and_order_is_kept():
    script = [(0, chat.ChatEvent("start", ANSWER_ROW)), (0, token("a"))]
    script += [(0, token(c)) for c in "bcde"]  # a burst right behind the first token
    script += [(0, chat.ChatEvent("step", ANSWER_ROW)), (0, token("f")), (1.5, token("g")), (0, token("h"))]
    script += [(0, chat.ChatEvent("end", ANSWER_ROW))]
    # A wide window, so a stall of the machine running the test cannot split the burst.
    out = await collect(Source(script), window_ms=500)
    assert out == [
        ("start", ""),
        ("token", "a"),  # the first token is not held back
        ("token", "bcde"),  # the burst behind it: one event
        ("step", ""),  # a step first passes on the tokens held, so the order is kept
        ("token", "f"),
        ("token", "g"),  # after a pause longer than the window: at once again
        ("token", "h"),  # held, then passed on before the end
        ("end", ""),
    ]


async def test_without_a_window_every_token_goes_alone():
    script = [(0, token(c)) for c in "abc"]
    assert await collect(Source(script), window_ms=0) == [("token", "a"), ("token", "b"), ("token", "c")]


async def test_tokens_held_go_out_when_the_window_closes_without_waiting_for_the_next():
    source = Source([(0, token("a")), (0, token("b")), (5, token("c"))])
    stream = chat.tokens_batched(source.events(), window_ms=20)
    assert (await anext(stream)).text == "a"
    held = await asyncio.wait_for(anext(stream), 1)  # not after the 5 s pause before "c"
    assert held.text == "b"
    await stream.aclose()
    assert source.ended == "cancelled"  # closing the batcher stops the model (the answer: stopped)


async def read_then_cancel(texts: list[str], *, window_ms: float) -> tuple[list[str], bool]:
    """Read ``tokens_batched`` over a stream that sends ``texts`` then waits, and whose clean-up takes
    50 ms (storing what was produced); cancel the reader after 50 ms. Returns the texts the reader
    saw and whether the stream's clean-up had run to its end when the cancelled reader returned."""
    finished = asyncio.Event()

    async def events():
        for text in texts:
            yield token(text)
        try:
            await asyncio.sleep(10)
            yield token("never")
        finally:
            await asyncio.shield(asyncio.sleep(0.05))  # storing what was produced
            finished.set()

    seen: list[str] = []

    async def read():
        async for event in chat.tokens_batched(events(), window_ms=window_ms):
            seen.append(event.text)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.05)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    return seen, finished.is_set()


async def test_cancelling_the_reader_while_tokens_are_held_stops_the_stream_and_waits_for_its_clean_up():
    seen, finished = await read_then_cancel(["a", "b"], window_ms=60_000)  # "b" held: the window is open
    assert seen == ["a"]
    assert finished


async def test_cancelling_the_reader_cancels_the_stream_once_and_waits_for_it():
    _seen, finished = await read_then_cancel(["a"], window_ms=5)
    assert finished  # the stream's own clean-up ran to the end before the reader returned


@pytest.mark.django_db(transaction=True)
async def test_the_chat_socket_sends_a_fast_models_tokens_in_fewer_frames(
    conversation, alice_session, monkeypatch, settings
):
    settings.CHAT_TOKEN_BATCH_MS = 5000  # step and end events flush what is held, so nothing waits 5 s
    version = await sync_to_async(ModelVersionFactory)(number=7)
    scripted = ScriptedPolicy(version)  # all chunks at once: a model far faster than the socket

    async def get_policy():
        return scripted

    monkeypatch.setattr(chat.stream, "get_policy", get_policy)
    communicator, connected, _ = await connect(conversation, alice_session)
    assert connected
    await communicator.send_json_to({"type": "send", "content": "How do I boil an egg?"})
    frames = await receive_until(communicator, FINAL)
    await communicator.disconnect()

    token_frames = [f for f in frames if '-live" hx-swap-oob="beforeend"' in f]
    assert tokens_of(frames) == "".join(ANSWER)
    assert 1 < len(token_frames) < len(ANSWER)
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert answer.content == "".join(ANSWER)
    assert answer.token_count == len(ANSWER)  # tokens are counted as generated, not as sent


@pytest.mark.django_db(transaction=True)
async def test_the_tokens_held_go_out_when_the_model_is_done_not_after_the_answer_is_stored(alice, monkeypatch):
    """The answer's last words are not held for the batching window (nor for the trips that store
    the answer): ``answer_stream`` says ``streamed`` as soon as the model's stream ends."""
    from tests.factories import UserMessageFactory

    prompt = await sync_to_async(UserMessageFactory)(conversation__user=alice)
    version = await sync_to_async(ModelVersionFactory)(number=7)
    scripted = ScriptedPolicy(version, chunks=["Boil", " the", " water."])  # one step: none ends early

    async def get_policy():
        return scripted

    monkeypatch.setattr(chat.stream, "get_policy", get_policy)
    storing, store = threading.Event(), chat.stream._answer_store_final

    def store_when_let(**kwargs):
        assert storing.wait(10)
        return store(**kwargs)

    monkeypatch.setattr(chat.stream, "_answer_store_final", store_when_let)
    events = chat.tokens_batched(chat.answer_stream(prompt=prompt), window_ms=60_000)
    try:
        assert (await anext(events)).kind == "start"
        assert (await anext(events)).text == "Boil"  # the first token at once
        held = await asyncio.wait_for(anext(events), 5)  # not after the 60 s window, nor the store
        assert (held.kind, held.text) == ("token", " the water.")
        assert (await anext(events)).kind == "streamed"
        answer = await sync_to_async(Message.objects.get)(role="assistant")
        assert answer.status == "streaming"  # not stored yet (held back): the tokens did not wait for it
        storing.set()
        rest = [event.kind async for event in events]
    finally:
        storing.set()
        await events.aclose()
    assert rest == ["end"]
    await sync_to_async(answer.refresh_from_db)()
    assert (answer.status, answer.content) == ("complete", "Boil the water.")


@pytest.mark.django_db(transaction=True)
async def test_database_calls_from_async_code_run_side_by_side(settings):
    """Four calls that can only finish together (a barrier): on Channels' one thread they cannot."""
    settings.ASYNC_DB_THREADS = 4
    barrier = threading.Barrier(4, timeout=5)

    def meet() -> str:
        barrier.wait()
        return threading.current_thread().name

    names = await asyncio.gather(*(db_async(meet)() for _ in range(4)))
    assert len(set(names)) == 4
    assert all(name.startswith("async-db") for name in names)

    one_thread = threading.Barrier(2, timeout=0.5)

    def meet_one() -> None:
        one_thread.wait()

    with pytest.raises(threading.BrokenBarrierError):  # what the chat did before: one thread for all
        await asyncio.gather(*(database_sync_to_async(meet_one)() for _ in range(2)))


@pytest.mark.django_db(transaction=True)
async def test_a_stop_while_a_version_loads_stores_the_answer_as_stopped(alice, monkeypatch):
    """The answer row exists from the first database trip; a stop before the model answers must not
    leave it ``streaming`` (it would count as served in the analytics)."""
    from tests.factories import UserMessageFactory

    prompt = await sync_to_async(UserMessageFactory)(conversation__user=alice)
    version = await sync_to_async(ModelVersionFactory)(number=7)

    async def loading():  # the version that answers is still loading (seconds in real life)
        await asyncio.sleep(30)
        return ScriptedPolicy(version)

    monkeypatch.setattr(chat.stream, "get_policy", loading)
    await stop_stream(prompt, until=asyncio.sleep(0.3))
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert (answer.status, answer.content) == ("stopped", "")


async def stop_while_writing(monkeypatch, prompt: Message, name: str) -> None:
    """Stream an answer to ``prompt``; stop it while ``chat.stream.<name>`` (a database call) runs in its
    thread, 0.3 s long; return once that thread has finished, whatever the stopped stream did."""
    import time

    writing = threading.Event()
    call = getattr(chat.stream, name)

    def slow(**kwargs):
        writing.set()
        time.sleep(0.3)  # the stop lands while this thread writes
        return call(**kwargs)

    monkeypatch.setattr(chat.stream, name, slow)
    await stop_stream(prompt, until=asyncio.to_thread(writing.wait, 5))
    await asyncio.sleep(0.5)  # the thread finishes


async def stop_stream(prompt: Message, *, until: Awaitable[object]) -> None:
    """Stream an answer to ``prompt`` in a task, cancel it (a stop) once ``until`` is done, and check
    the cancellation reached the caller."""

    async def consume():
        async for _ in chat.answer_stream(prompt=prompt):
            pass

    task = asyncio.create_task(consume())
    await until
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.django_db(transaction=True)
async def test_a_stop_while_a_finished_step_is_being_stored_keeps_the_answer(alice, monkeypatch):
    """The step's row may or may not be written when the stop lands (its thread goes on); the answer
    is stored as ``stopped`` with each step once, either way."""
    from tests.factories import UserMessageFactory

    prompt = await sync_to_async(UserMessageFactory)(conversation__user=alice)
    version = await sync_to_async(ModelVersionFactory)(number=7)
    scripted = ScriptedPolicy(version, chunks=["Sure.\n", "1. Boil", " water.\n", "2. Add"], delay=0.01)

    async def get_policy():
        return scripted

    monkeypatch.setattr(chat.stream, "get_policy", get_policy)
    await stop_while_writing(monkeypatch, prompt, "_step_create")
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    steps = await sync_to_async(lambda: list(answer.steps.order_by("index").values_list("index", "content")))()
    assert answer.status == "stopped"
    assert steps[0] == (0, "Sure.")
    assert [index for index, _ in steps] == list(range(len(steps)))


@pytest.mark.django_db(transaction=True)
async def test_opening_the_chat_socket_reads_the_user_on_the_shared_database_threads(
    conversation, alice_session, monkeypatch
):
    import channels.auth

    threads: list[str] = []
    real = channels.auth.get_user.func

    class Recorded:
        @staticmethod
        def func(scope):
            threads.append(threading.current_thread().name)
            return real(scope)

    monkeypatch.setattr("feedback.ws_tickets.get_user", Recorded)
    communicator, connected, _ = await connect(conversation, alice_session)
    await communicator.disconnect()
    assert connected
    assert threads
    assert all(name.startswith("async-db") for name in threads)


@pytest.mark.django_db(transaction=True)
async def test_a_slow_step_write_does_not_hold_up_the_tokens_behind_it(alice, monkeypatch):
    from tests.factories import UserMessageFactory

    prompt = await sync_to_async(UserMessageFactory)(conversation__user=alice)
    version = await sync_to_async(ModelVersionFactory)(number=7)
    scripted = ScriptedPolicy(version, chunks=["Sure.\n", "1. Boil", " water", " for", " nine", " minutes."])

    async def get_policy():
        return scripted

    monkeypatch.setattr(chat.stream, "get_policy", get_policy)
    create = chat.stream._step_create

    def slow_create(**kwargs):
        import time

        time.sleep(0.3)
        return create(**kwargs)

    monkeypatch.setattr(chat.stream, "_step_create", slow_create)
    kinds = [(event.kind, event.text) async for event in chat.answer_stream(prompt=prompt)]

    tokens_after_step_0 = [text for kind, text in kinds[kinds.index(("token", "1. Boil")) :] if kind == "token"]
    first_step = next(i for i, (kind, _) in enumerate(kinds) if kind == "step")
    # All streamed meanwhile, and the model was done before the step's row was.
    assert [kind for kind, _ in kinds[first_step - 6 : first_step]] == ["token"] * 5 + ["streamed"]
    assert tokens_after_step_0 == ["1. Boil", " water", " for", " nine", " minutes."]
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    steps = await sync_to_async(lambda: list(answer.steps.order_by("index").values_list("content", flat=True)))()
    assert steps == ["Sure.", "1. Boil water for nine minutes."]


@pytest.mark.django_db(transaction=True)
async def test_a_stop_while_the_answer_row_is_being_written_stores_it_as_stopped(alice, monkeypatch):
    """The answer's first database trip (history, arm, the answer row) goes on in its thread when a
    stop lands during it; the row it writes must not stay ``streaming``."""
    from tests.factories import UserMessageFactory

    prompt = await sync_to_async(UserMessageFactory)(conversation__user=alice)
    version = await sync_to_async(ModelVersionFactory)(number=7)

    async def get_policy():
        return ScriptedPolicy(version)

    monkeypatch.setattr(chat.stream, "get_policy", get_policy)
    await stop_while_writing(monkeypatch, prompt, "generation_begin")
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert (answer.status, answer.content) == ("stopped", "")
