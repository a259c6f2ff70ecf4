"""Abuse limits (issue 8 point 4): feedback frames on the chat socket, sign-in per username and per
address, the socket's origin check; and the chat socket never dies on bad text (point 3)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from core import ratelimit
from feedback.consumers import CLOSE_RATE_LIMITED, ChatConsumer
from feedback.models import Feedback, Message
from rlhf_site.asgi import application
from rlhf_site.websocket import origin_allowed
from tests import test_chat_consumer
from tests.factories import AssistantMessageFactory, UserFactory
from tests.test_chat_consumer import FINAL, ask, connect, receive_until

# The chat socket tests' scripted policy (alice's session cookie is conftest's ``alice_session``).
policy = test_chat_consumer.policy

# --- core.ratelimit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"), [("600/min", (600, 60)), ("10/h", (10, 3600)), ("5/s", (5, 1)), ("1000/day", (1000, 86400))]
)
def test_rates_parse(text, rate):
    parsed = ratelimit.Rate.parse(text)
    assert (parsed.count, parsed.seconds) == rate


@pytest.mark.parametrize("text", ["", "ten/min", "0/min", "10/week", "10"])
def test_a_bad_rate_is_refused(text):
    with pytest.raises(ValueError, match="is not a rate"):
        ratelimit.Rate.parse(text)


@contextlib.contextmanager
def redis_sends() -> Iterator[list[bytes]]:
    """The writes to Redis's sockets inside the block: one per round trip (a pipeline is one)."""
    from redis.connection import AbstractConnection

    sends: list[bytes] = []
    send = AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):  # type: ignore[no-untyped-def]
        sends.append(command)
        return send(self, command, check_health)

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(AbstractConnection, "send_packed_command", counted)
        yield sends


def test_a_rolling_limit_counts_the_last_window_by_its_share_of_the_period(db):
    rate = ratelimit.Rate(2, 60)
    verdicts = [ratelimit.hit("r", rate, now=120.0 + i) for i in range(3)]
    assert [(v.allowed, v.count) for v in verdicts] == [(True, 1), (True, 2), (False, 3)]
    # At 2 hits and 2 s into the window, one more fits once the window's own weight has fallen to
    # one hit: 58 s to its end, then half the next window.
    assert verdicts[-1].retry_after == 88
    assert ratelimit.peek("r", rate, now=130.0) == ratelimit.Verdict(False, 2, 80)  # the refused hit was taken back
    assert ratelimit.hit("r", rate, now=180.0).allowed is False  # a new window, the same minute
    assert ratelimit.hit("r", rate, now=209.0).allowed is False
    assert ratelimit.hit("r", rate, now=210.0).allowed is True  # 120 + 2 + 88
    assert ratelimit.hit("other", rate, now=125.0).allowed is True  # keys are separate


def test_a_rolling_limit_of_zero_refuses_without_an_error(db):
    assert ratelimit.hit("zero", ratelimit.Rate(0, 60), now=10.0) == ratelimit.Verdict(False, 0, 60)


def test_a_rolling_wait_is_not_rounded_up_past_the_allowed_second(db):
    rate = ratelimit.Rate(2, 60)  # 3 counted, 37 s in: 63 s, where 1 - 1/3 rounding made 64
    assert ratelimit._rolling_wait(0, 3, rate, 37.0) == 63


def test_a_rolling_limit_allows_no_burst_across_a_windows_edge(db):
    rate = ratelimit.Rate(2, 60)
    assert [ratelimit.hit("edge", rate, now=t).allowed for t in (179.0, 179.5, 180.0, 180.5)] == [
        True,
        True,
        False,
        False,
    ]  # a fixed window would allow all four


@pytest.mark.redis
def test_a_rolling_hit_is_one_round_trip_to_redis():
    key = f"rolling-trip-{uuid.uuid4()}"
    ratelimit.hit("warm-up", ratelimit.Rate(9, 60))  # the client's connection opened outside the count
    with redis_sends() as sends:
        verdicts = [ratelimit.hit(key, ratelimit.Rate(3, 60), now=60.0 + i) for i in range(5)]
    assert [(v.allowed, v.count) for v in verdicts] == [(True, 1), (True, 2), (True, 3), (False, 4), (False, 4)]
    assert len(sends) == 5  # a refused hit is taken back in the same trip (a second trip before 2026-12-02)
    from django.core.cache import caches

    backend = caches["default"]
    stored = backend.make_and_validate_key(f"ratelimit:{key}:1")
    client = backend._cache.get_client(stored)
    assert int(client.get(stored)) == 3  # only the allowed hits are counted
    assert 60 < client.ttl(stored) <= 121  # kept for the next window's estimate


@pytest.mark.redis
def test_a_rolling_hit_weighs_the_last_window_in_redis_as_in_python():
    """The script's estimate at an exact boundary: 2 hits in the last window weighted 0.5 plus 1 is
    exactly the limit of 2, allowed; one more is not."""
    key = f"rolling-edge-{uuid.uuid4()}"
    rate = ratelimit.Rate(2, 60)
    assert [ratelimit.hit(key, rate, now=60.0 + i).allowed for i in range(2)] == [True, True]
    assert ratelimit.hit(key, rate, now=150.0) == ratelimit.Verdict(True, 2, 0)
    refused = ratelimit.hit(key, rate, now=150.0)
    assert (refused.allowed, refused.count, refused.retry_after) == (False, 3, 30)


def test_a_client_that_waits_its_retry_after_is_allowed_despite_float_error(db):
    """15 hits last window at 40 s into this one weigh 15 x (1 - 40/60), which floats make
    5.000000000000001: with a limit of 6 the next hit was refused at the very second Retry-After had
    named. The estimate is compared with a tolerance far under one hit."""
    from django.core.cache import cache

    rate = ratelimit.Rate(6, 60)
    cache.set("ratelimit:f:1", 15)  # the last window's count (of a higher limit before, say)
    assert 15 * (1 - 40 / 60) + 1 > 6  # the float error the tolerance is for
    assert ratelimit.peek("f", rate, now=160.0).allowed is True
    assert ratelimit.hit("f", rate, now=160.0) == ratelimit.Verdict(True, 6, 0)
    assert ratelimit.hit("f", rate, now=160.0).allowed is False


def test_a_peek_says_what_the_next_hit_would_get_without_counting_one(db):
    rate = ratelimit.Rate(3, 60)
    assert ratelimit.peek("p", rate, now=60.0) == ratelimit.Verdict(True, 0, 0)
    for _ in range(3):
        ratelimit.hit("p", rate, now=61.0)
    assert [ratelimit.peek("p", rate, now=100.0) for _ in range(2)] == [ratelimit.Verdict(False, 3, 40)] * 2
    # 40 s: 20 s into the next window, where the last one's 3 hits weigh 2
    assert ratelimit.peek("p", rate, now=139.0).allowed is False
    assert ratelimit.peek("p", rate, now=141.0) == ratelimit.Verdict(True, 2, 0)
    assert ratelimit.hit("p", rate, now=141.0).allowed is True  # as the peek said


def test_no_rate_is_no_limit(db):
    assert all(ratelimit.hit("none", None).allowed for _ in range(3))
    assert ratelimit.peek("none", None).allowed


def test_a_rolling_limit_works_on_the_in_memory_cache_too(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "rr"}}
    rate = ratelimit.Rate(1, 60)
    assert [ratelimit.hit("k", rate, now=60.0).allowed for _ in range(2)] == [True, False]
    assert ratelimit.hit("k", rate, now=120.0).allowed is False
    assert ratelimit.hit("k", rate, now=150.0).retry_after == 30  # half the last hit still counts
    assert ratelimit.peek("k", rate, now=170.0) == ratelimit.Verdict(False, 1, 10)  # a sixth still counts
    assert ratelimit.hit("k", rate, now=180.0).allowed is True


def test_limits_degrade_open_when_the_cache_is_unreachable(settings, caplog):
    settings.CACHES = {
        "default": {
            "BACKEND": "core.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
            "OPTIONS": {"socket_connect_timeout": 1},
        }
    }
    rate = ratelimit.Rate(1, 60)
    assert all(ratelimit.hit("k", rate).allowed for _ in range(3))
    assert ratelimit.peek("k", rate).allowed
    assert "Rate limit k not applied: the cache is unreachable" in caplog.text


# --- Sign-in ---------------------------------------------------------------------------------------

LOGINS = ["/accounts/login/", "/admin/login/"]


def login(url: str, username: str, password: str, address: str = "10.0.0.1", **extra: str):
    client = Client(REMOTE_ADDR=address, **extra)
    response = client.post(url, {"username": username, "password": password})
    return client, response


@pytest.fixture
def staff(db):
    alice = UserFactory(username="alice", is_staff=True)
    alice.set_password("right-password")
    alice.save()
    bob = UserFactory(username="bob", is_staff=True)
    bob.set_password("bobs-password")
    bob.save()
    return alice, bob


@pytest.mark.redis
@pytest.mark.parametrize("url", LOGINS)
def test_sign_in_is_throttled_per_username(staff, settings, url):
    settings.LOGIN_RATE_PER_USERNAME = "3/h"
    for i in range(3):  # from three addresses: the username's own count
        _, response = login(url, "alice", "wrong", address=f"10.0.0.{i}")
        assert response.status_code == 200
    client, response = login(url, "Alice", "right-password", address="10.0.1.1")

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert "Too many failed sign-in attempts for this username or from this address." in response.content.decode()
    assert "_auth_user_id" not in client.session
    # bob is not held up by alice's attempts.
    client, response = login(url, "bob", "bobs-password", address="10.0.1.1")
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(staff[1].pk)


@pytest.mark.redis
@pytest.mark.parametrize("url", LOGINS)
def test_sign_in_is_throttled_per_address_and_a_forwarded_for_header_does_not_dodge_it(staff, settings, url):
    settings.LOGIN_RATE_PER_ADDRESS = "3/h"
    for i in range(3):  # three usernames, one address, each claiming another forwarded address
        _, response = login(url, f"user{i}", "wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
        assert response.status_code == 200
    client, response = login(url, "alice", "right-password", HTTP_X_FORWARDED_FOR="192.0.2.99")
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
    # The same user from another address signs in.
    client, response = login(url, "alice", "right-password", address="10.0.0.2")
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(staff[0].pk)


@pytest.mark.redis
def test_successful_sign_ins_are_not_counted(staff, settings):
    settings.LOGIN_RATE_PER_USERNAME = "2/h"
    for _ in range(4):
        _, response = login("/accounts/login/", "alice", "right-password")
        assert response.status_code == 302


# --- The chat socket: feedback frames --------------------------------------------------------------


async def send_json(communicator, payload) -> None:
    await communicator.send_to(text_data=json.dumps(payload))


@pytest.mark.django_db(transaction=True)
async def test_feedback_frames_past_the_rate_get_an_error_and_the_socket_is_closed(
    conversation, alice_session, settings
):
    settings.CHAT_SOCKET_RATE = "3/min"
    answer = await sync_to_async(AssistantMessageFactory)(conversation=conversation)
    communicator, connected, _ = await connect(conversation, alice_session)
    assert connected
    for step in range(3):
        await send_json(
            communicator, {"type": "feedback", "message_id": str(answer.id), "step_index": step, "thumbs": "up"}
        )
        assert "Saved." in await communicator.receive_from()
    await send_json(communicator, {"type": "feedback", "message_id": str(answer.id), "rating": 5})

    error = await communicator.receive_from()
    closed = await communicator.receive_output()
    assert "You are sending feedback too fast, so this connection is closed." in error
    assert closed == {"type": "websocket.close", "code": CLOSE_RATE_LIMITED}
    rows = await sync_to_async(lambda: sorted(Feedback.objects.values_list("step__index", flat=True)))()
    assert rows == [0, 1, 2]  # the fourth frame wrote nothing


@pytest.mark.django_db(transaction=True)
async def test_the_frame_limit_holds_across_a_users_sockets(conversation, alice_session, settings):
    settings.CHAT_SOCKET_RATE = "1/min"
    answer = await sync_to_async(AssistantMessageFactory)(conversation=conversation)
    first, _, _ = await connect(conversation, alice_session)
    await send_json(first, {"type": "feedback", "message_id": str(answer.id), "thumbs": "up"})
    assert "Saved." in await first.receive_from()
    second, _, _ = await connect(conversation, alice_session)
    await send_json(second, {"type": "compare", "prompt_message_id": str(answer.parent_id),
                             "chosen_message_id": str(answer.id), "rejected_message_id": str(answer.id)})  # fmt: skip
    assert "too fast" in await second.receive_from()
    assert (await second.receive_output())["code"] == CLOSE_RATE_LIMITED
    await first.disconnect()


# --- The chat socket: text that is not Unicode -------------------------------------------------------

S = "\\ud800"  # a lone surrogate, as JSON text carries it


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "frame",
    [
        f'{{"type": "send", "content": "eggs {S}"}}',
        f'{{"type": "{S}"}}',
        f'{{"type": "feedback", "message_id": "{S}", "thumbs": "up"}}',
        '{"type": "feedback", "message_id": "%(id)s", "thumbs": "' + S + '"}',
        '{"type": "feedback", "message_id": "%(id)s", "comment": "' + S + '"}',
        '{"type": "feedback", "message_id": "%(id)s", "thumbs": "up", "' + S + '": 1}',
        '{"type": "send", "content": NaN}',
        '{"type": "send", "content": ' + "[" * 5000 + "]" * 5000 + "}",
    ],
    ids=["content", "type", "uuid", "echoed-choice", "comment", "unknown-key", "nan", "deep"],
)
async def test_a_frame_with_a_lone_surrogate_gets_an_error_and_the_socket_lives_on(
    conversation, alice_session, policy, frame
):
    answer = await sync_to_async(AssistantMessageFactory)(conversation=conversation)
    communicator, _, _ = await connect(conversation, alice_session)
    await communicator.send_to(text_data=frame.replace("%(id)s", str(answer.id)))
    reply = await communicator.receive_from()
    reply.encode("utf-8")  # what the server must send is valid UTF-8
    assert 'id="chat-errors"' in reply
    assert "That message " in reply
    frames = await ask(communicator, "Still there?")
    await communicator.disconnect()
    assert "Still there?" in frames[0]
    assert not await sync_to_async(Feedback.objects.exists)()
    assert await sync_to_async(Message.objects.filter(role="user", content__startswith="eggs").count)() == 0


@pytest.mark.django_db(transaction=True)
async def test_a_surrogate_frame_while_streaming_leaves_the_answer_complete(conversation, alice_session, policy):
    policy.delay = 0.05
    communicator, _, _ = await connect(conversation, alice_session)
    await send_json(communicator, {"type": "send", "content": "Eggs?"})
    frames = await receive_until(communicator, r"-live\" hx-swap-oob=\"beforeend\">\.")
    await communicator.send_to(text_data=f'{{"type": "feedback", "message_id": "x", "comment": "{S}"}}')
    frames += await receive_until(communicator, FINAL)
    await communicator.disconnect()

    assert any("lone surrogate" in frame for frame in frames)
    for frame in frames:
        frame.encode("utf-8")
    answer = await sync_to_async(Message.objects.get)(role="assistant")
    assert answer.status == "complete"
    assert answer.content == "Sure.\n1. Boil water.\n2. Add the egg.\n3. Wait nine minutes."


async def test_send_error_never_raises_and_never_sends_a_surrogate(monkeypatch):
    consumer = ChatConsumer()
    sent: list[str] = []

    async def capture(text_data=None, bytes_data=None, close=False):
        sent.append(text_data)

    monkeypatch.setattr(consumer, "send", capture)
    await consumer.send_error("bad \ud800 text")
    assert "bad \ufffd text" in sent[0]
    sent[0].encode("utf-8")

    async def broken(text_data=None, bytes_data=None, close=False):
        raise RuntimeError("the socket is gone")

    monkeypatch.setattr(consumer, "send", broken)
    await consumer.send_error("anything")  # logged, not raised


# --- The chat socket: origin ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "origin",
    ["https://testserver", "http://testserver:8001"],  # scheme, port (origin_allowed's test has more)
)
async def test_an_origin_of_another_scheme_host_or_port_is_refused(conversation, alice_session, origin):
    _, connected, _ = await connect(conversation, alice_session, origin=origin)
    assert connected is False


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("origin", ["http://testserver", "HTTP://TESTSERVER:80"])
async def test_the_sites_own_origin_is_accepted(conversation, alice_session, origin):
    communicator, connected, _ = await connect(conversation, alice_session, origin=origin)
    assert connected is True
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_missing_origin_is_refused(conversation, alice_session):
    headers = [(b"host", b"testserver"), (b"cookie", f"sessionid={alice_session}".encode())]
    communicator = WebsocketCommunicator(application, f"/ws/chat/{conversation.id}/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected is False


def scope(origin: str, host: str = "chat.example.com", scheme: str = "wss", **headers: str) -> dict:
    pairs = [(b"origin", origin.encode()), (b"host", host.encode())]
    pairs += [(name.encode(), value.encode()) for name, value in headers.items()]
    return {"type": "websocket", "scheme": scheme, "headers": pairs}


@pytest.mark.parametrize(
    ("kwargs", "allowed"),
    [
        ({"origin": "https://chat.example.com"}, True),
        ({"origin": "https://chat.example.com:443"}, True),
        ({"origin": "http://chat.example.com"}, False),  # wss socket, http page
        ({"origin": "https://chat.example.com:8443"}, False),
        ({"origin": "https://chat.example.com:8443", "host": "chat.example.com:8443"}, True),
        ({"origin": "https://chat.example.com", "scheme": "ws"}, False),
        # TLS taken by a proxy that says so in the header SECURE_PROXY_SSL_HEADER names
        ({"origin": "https://chat.example.com", "scheme": "ws", "x-forwarded-proto": "https"}, True),
        ({"origin": "https://other.example.com", "host": "other.example.com"}, False),  # not in ALLOWED_HOSTS
        ({"origin": "https://admin.example.com"}, True),  # in CSRF_TRUSTED_ORIGINS
        ({"origin": "http://admin.example.com"}, False),
        ({"origin": "https://evil.example"}, False),
        ({"origin": "null"}, False),  # sandboxed frames, file:// pages
        ({"origin": "chat.example.com"}, False),
        ({"origin": "https://chat.example.com:99999"}, False),  # no such port
    ],
)
def test_origin_allowed_compares_scheme_host_and_port(settings, kwargs, allowed):
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://admin.example.com"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert origin_allowed(scope(**kwargs)) is allowed
