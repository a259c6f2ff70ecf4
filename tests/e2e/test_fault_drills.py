"""Fault drills against real processes: PostgreSQL cut for 10 s under feedback load, Redis cut while
chatting, a training worker killed mid-run, the server process killed mid-answer. Each cut is a TCP
proxy (tests/faults.py) between the platform's server process and the service, or a SIGKILL.

The figures (time to a 503, recovery after the database returns) are printed: run with ``-s`` to see
them (README, "Fault drills"). The assertions are about what users see and what is stored, not about
times: a request that hangs fails on the client's timeout."""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import pytest
from rest_framework.authtoken.models import Token

from feedback.models import Feedback
from tests.e2e.servers import platform_server
from tests.factories import AssistantMessageFactory, ConversationFactory
from tests.faults import tcp_proxy
from tests.helpers import database_url, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request drowns the figures

OUTAGE_SECONDS = 10.0
CLIENTS = 3
# A request still unanswered after this long counts as hung: far above the pool timeout (2 s) that
# bounds a request while the database is gone.
CLIENT_TIMEOUT = 8.0


def through(proxy_port: int, url: str) -> str:
    """``url`` (a DATABASE_URL or REDIS_URL) with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{auth + '@' if auth else ''}127.0.0.1:{proxy_port}"))


def report(title: str, figures: dict[str, str]) -> None:
    print(f"\nDRILL {title}: " + "; ".join(f"{name} {value}" for name, value in figures.items()))


# --- (a) PostgreSQL unreachable for 10 s during feedback load ---------------------------------------


@dataclass
class Answer:
    client: int
    target: tuple[str, int | None]
    comment: str
    sent: float
    done: float
    status: int  # 0: no answer (the client gave up or could not connect)
    body: dict | None
    retry_after: str | None


def feedback_load(base: str, token: str, targets: list[tuple[str, int | None]], client: int, stop: threading.Event,
                  answers: list[Answer]) -> None:  # fmt: skip
    """One client: rate its own targets in turn, each time with a new comment, until ``stop``."""
    headers = {"Authorization": f"Token {token}"}
    with httpx.Client(base_url=base, timeout=CLIENT_TIMEOUT, headers=headers) as http:
        n = 0
        while not stop.is_set():
            target = targets[n % len(targets)]
            comment = f"client {client} request {n}"
            body: dict = {"message_id": target[0], "comment": comment}
            if target[1] is not None:
                body["step_index"] = target[1]
            sent = time.monotonic()
            try:
                response = http.post("/api/assistant/feedback", json=body)
                status, payload, retry = response.status_code, response.json(), response.headers.get("Retry-After")
            except (httpx.HTTPError, ValueError):
                status, payload, retry = 0, None, None
            answers.append(Answer(client, target, comment, sent, time.monotonic(), status, payload, retry))
            n += 1


def test_drill_postgres_cut_for_ten_seconds_under_feedback_load(alice, tmp_path):
    token = Token.objects.create(user=alice).key
    conversation = ConversationFactory(user=alice)
    targets = [
        (str(answer.id), step)
        for answer in AssistantMessageFactory.create_batch(30, conversation=conversation)
        for step in (None, 0, 1, 2)
    ]
    db = urlsplit(database_url())
    answers: list[Answer] = []
    stop = threading.Event()
    with (
        tcp_proxy(db.hostname or "127.0.0.1", db.port or 5432) as proxy,
        platform_server(
            tmp_path,
            "db-drill",
            database=through(proxy.port, database_url()),
            API_THROTTLE_RATE="off",
            DATABASE_POOL_TIMEOUT="2",
            LOG_LEVEL="WARNING",
        ) as base,  # fmt: skip
    ):
        clients = [
            threading.Thread(target=feedback_load, args=(base, token, targets[i::CLIENTS], i, stop, answers))
            for i in range(CLIENTS)
        ]
        for thread in clients:
            thread.start()
        try:
            assert wait_until(lambda: sum(a.status in (200, 201) for a in answers) >= 30, timeout=60)
            cut_at = time.monotonic()
            proxy.cut()
            time.sleep(OUTAGE_SECONDS)
            restored_at = time.monotonic()
            proxy.restore()

            def recovered() -> bool:
                return sum(a.status in (200, 201) and a.sent > restored_at for a in list(answers)) >= 30

            assert wait_until(recovered, timeout=60, interval=0.1), "no recovery; statuses after the restore: " + str(
                sorted({a.status for a in answers if a.sent > restored_at})
            )
        finally:
            stop.set()
            for thread in clients:
                thread.join(timeout=30)

    # What users saw: an answer every time, a 503 in the one error shape with Retry-After while
    # the database was gone, and nothing else.
    assert {a.status for a in answers} <= {200, 201, 503}, sorted({a.status for a in answers})
    unavailable = [a for a in answers if a.status == 503]
    assert unavailable, "no request noticed the outage"
    for answer in unavailable:
        assert answer.body == {
            "error": {
                "status": 503,
                "code": "database_unavailable",
                "message": "The database cannot be reached right now; nothing was changed. Try again shortly.",
                "fields": {},
            }
        }
        assert answer.retry_after == "5"
    # Recovered: from the first success after the restore on, every request succeeds (broken pooled
    # connections were replaced, not handed out); and no 503 before the cut.
    first_back = min((a for a in answers if a.status in (200, 201) and a.done > restored_at), key=lambda a: a.done)
    assert all(a.status in (200, 201) for a in answers if a.sent >= first_back.done)
    assert all(a.done >= cut_at for a in unavailable)

    # What was stored: every acknowledged write. Per target (each client owns its targets and
    # writes them one at a time), the stored comment is the last acknowledged one, or one written
    # later by a request whose 503 came after its commit (the database may have it or not).
    ok = [a for a in answers if a.status in (200, 201)]
    ids = {a.body["id"] for a in ok}  # type: ignore[index]
    missing = len(ids) - Feedback.objects.filter(id__in=ids).count()
    assert missing == 0, f"{missing} acknowledged feedback rows are not in the database"
    stored = {
        (str(f.message_id), f.step.index if f.step else None): f.comment
        for f in Feedback.objects.filter(user=alice).select_related("step")
    }
    for target in {a.target for a in ok}:
        on_target = [a for a in answers if a.target == target]
        last_ok = max(i for i, a in enumerate(on_target) if a.status in (200, 201))
        allowed = {a.comment for a in on_target[last_ok:]}
        assert stored[target] in allowed, (target, stored[target], on_target[last_ok].comment)

    latencies = [a.done - a.sent for a in unavailable]
    first_503 = min(a.done for a in unavailable) - cut_at
    report(
        "postgres cut 10 s",
        {
            "requests": str(len(answers)),
            "2xx": str(len(ok)),
            "503": str(len(unavailable)),
            "other": str(len(answers) - len(ok) - len(unavailable)),
            "first 503 after the cut": f"{first_503:.2f} s",
            "503 latency p50/max": f"{statistics.median(latencies):.2f}/{max(latencies):.2f} s",
            "recovery (restore to first 2xx)": f"{first_back.done - restored_at:.2f} s",
            "acknowledged rows missing": str(missing),
        },
    )


# --- (b) Redis gone while chatting -----------------------------------------------------------------


@pytest.fixture
def redis_db():
    """The test's Redis database (REDIS_URL), reached directly, not through the proxy."""
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL)


def chat_rate_keys(client, user_id: int) -> list[bytes]:
    return list(client.scan_iter(match=f"*chat-rate:{user_id}:*"))


@pytest.mark.redis
def test_drill_redis_cut_while_chatting(alice, tmp_path, settings, redis_db):
    from django.conf import settings as live_settings

    from feedback.models import Message
    from models_registry.services import model_version_make_live, model_version_register
    from tests.e2e.servers import chat, fake_model_server, session_of

    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["127.0.0.1"]
    redis_url = urlsplit(live_settings.REDIS_URL)
    for key in chat_rate_keys(redis_db, alice.pk):
        redis_db.delete(key)
    conversation = ConversationFactory(user=alice)
    session = session_of(alice)
    replies: list[tuple[str, str, float]] = []  # (phase, final frame, seconds to the final frame)
    with (
        fake_model_server("1. Still answering.") as model_url,
        tcp_proxy(redis_url.hostname or "127.0.0.1", redis_url.port or 6379) as proxy,
    ):
        model_version_make_live(
            version=model_version_register(
                kind="policy", artifact_path="", checksums={}, backend="openai", base_url=model_url, model_name="fake"
            )
        )
        # Two answers a minute: the three sent during the outage pass only because the limit fails open.
        with platform_server(tmp_path, "redis-drill", REDIS_URL=through(proxy.port, live_settings.REDIS_URL),
                             SERVING_OPENAI_ALLOWED_HOSTS="127.0.0.1", CHAT_RATE_PER_MINUTE="2") as base:  # fmt: skip

            def ask(phase: str, text: str) -> None:
                started = time.monotonic()
                replies.append((phase, chat(base, session, conversation.id, text), time.monotonic() - started))

            ask("before", "Hello while Redis is up")
            assert chat_rate_keys(redis_db, alice.pk), "the limit did not count in Redis"
            proxy.cut()
            for n in range(3):
                ask("during", f"Hello while Redis is down ({n})")
            for key in chat_rate_keys(redis_db, alice.pk):
                redis_db.delete(key)
            proxy.restore()
            ask("after", "Hello again")
            counted_again = chat_rate_keys(redis_db, alice.pk)

    # What the user saw: every message answered, in full; what was stored: every answer, complete.
    for phase, frame, _ in replies:
        assert "Still answering." in frame, (phase, frame[-500:])
        assert 'data-status="failed"' not in frame
        assert "went wrong" not in frame
    answers = Message.objects.filter(conversation=conversation, role="assistant").order_by("created_at")
    assert [(a.status, a.content.strip()) for a in answers] == [("complete", "1. Still answering.")] * 5
    assert Message.objects.filter(conversation=conversation, role="user").count() == 5
    # The limit counts in Redis again once it is back (the three answers during the outage went uncounted).
    assert counted_again
    assert proxy.refused > 0, "the platform never tried Redis during the outage"
    report(
        "redis cut while chatting",
        {
            "answers": f"{len(replies)}/{len(replies)} complete",
            "during the outage": f"{sum(p == 'during' for p, _, _ in replies)} answered",
            "seconds to a full answer before/during/after": "/".join(
                f"{max(s for p, _, s in replies if p == phase):.2f}" for phase in ("before", "during", "after")
            ),
            "connections refused by the cut": str(proxy.refused),
        },
    )


# --- (c) A training worker killed mid-run, then restarted -------------------------------------------


@pytest.fixture
def queues():
    """The queues start and end empty: no task left by another test runs here, and the message the
    killed worker never acknowledged is not redelivered to a later test's worker."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = ("training", "default", "unacked", "unacked_index")
    client.delete(*keys)
    yield
    client.delete(*keys)


# Enough steps that the test sees the run training before it ends: on a quick machine 12 steps of the
# tiny model took 0.26 s and the run had succeeded before the 0.1 s polling saw a step (a flake).
STEPS = 200


@pytest.mark.redis
def test_drill_training_worker_killed_mid_run_is_reaped_and_the_retry_succeeds(alice, bootstrapped, queues, tmp_path):
    from django.conf import settings
    from django.contrib.auth.models import Permission
    from rest_framework.test import APIClient

    from models_registry.models import ModelVersion
    from tests.factories import UserFactory
    from tests.helpers import make_bootstrapped_live, start_worker
    from tests.training_data import seed_rated_conversations
    from training.models import TrainingRun

    make_bootstrapped_live(bootstrapped)
    seed_rated_conversations(alice, 16)
    operator = UserFactory(username="trainer")
    operator.user_permissions.add(*Permission.objects.filter(codename__in=["view_trainingrun", "start_trainingrun"]))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=operator).key}")
    env = {
        "REDIS_URL": settings.REDIS_URL,
        "VAR_DIR": str(tmp_path / "var"),
        "TRAINING_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "TRAINING_DATASETS_DIR": str(tmp_path / "datasets"),
        "TRAINING_HEARTBEAT_SECONDS": "0.2",
        # The reaper (beat, every second) fails a run silent for 5 s; the keepalive thread beats every 0.2 s.
        "TRAINING_STALE_AFTER_SECONDS": "5",
        "TRAINING_REAP_EVERY_SECONDS": "1",
        "CYCLE_SWEEP_SECONDS": "3600",
        "MONITOR_EVERY_SECONDS": "3600",
        "HF_HUB_OFFLINE": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }
    processes = []

    def worker(name: str, queue: str, *args: str):
        process = start_worker(queue, env, tmp_path / f"{name}.log", args=("--hostname", f"{name}@drill", *args))
        processes.append(process)
        return process

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log")))

    # A reward run: long enough to be killed mid-training, short enough for the retry to finish in seconds.
    config = {"max_steps": STEPS, "batch_size": 4, "max_length": 128, "min_train_rows": 4, "test_fraction": 0.25}
    try:
        # As in production (bin/run): beat and the short tasks (the reaper among them) in one process,
        # training in another.
        worker("default", "default", "--beat", "--schedule", str(tmp_path / "beat-schedule"))
        first = worker("training-1", "training")
        run_id = api.post("/api/training/runs", {"kind": "reward", "config": config}, format="json").json()["id"]

        def training() -> bool:
            run = TrainingRun.objects.get(id=run_id)
            return run.phase == "training" and run.step > 0

        assert wait_until(training, timeout=240, interval=0.1), logs()
        first.kill()  # SIGKILL: no cleanup, no last word
        first.wait(timeout=30)
        killed_at = time.monotonic()
        worker("training-2", "training")  # the restart

        assert wait_until(lambda: TrainingRun.objects.get(id=run_id).status == "failed", timeout=120), logs()
        reaped_after = time.monotonic() - killed_at
        run = TrainingRun.objects.get(id=run_id)
        assert run.error == "reaped: stale heartbeat"
        assert run.error_message.startswith("The worker (")
        assert f":{first.pid}) stopped reporting for more than 5 s" in run.error_message
        assert run.output_version is None

        # The retry: the same run started again, as the message says; the restarted worker trains it.
        detail = api.get(f"/api/training/runs/{run_id}").json()
        retried = api.post("/api/training/runs", {"kind": detail["kind"], "config": config}, format="json")
        assert retried.status_code == 201, retried.json()
        retry_id = retried.json()["id"]
        retry_started = time.monotonic()
        assert wait_until(lambda: not TrainingRun.objects.get(id=retry_id).is_active, timeout=300, interval=0.5), logs()
        retry_seconds = time.monotonic() - retry_started
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)

    retry = TrainingRun.objects.get(id=retry_id)
    assert retry.status == "succeeded", f"{retry.error_message}\n{retry.error}\n{logs()}"
    assert retry.worker.endswith(f":{processes[2].pid}")  # the restarted worker
    assert retry.step == STEPS
    assert retry.output_version.kind == "reward"
    assert retry.output_version.status == ModelVersion.Status.CANDIDATE
    assert TrainingRun.objects.get(id=run_id).status == "failed"
    report(
        "training worker killed",
        {
            "killed at step": f"{run.step}/{STEPS}",
            "reaped after the kill": f"{reaped_after:.1f} s (stale after 5 s, reaper every 1 s)",
            "retry trained and registered in": f"{retry_seconds:.1f} s",
        },
    )


# --- (d) The server process killed while it streams an answer ---------------------------------------


def command_line(process: psutil.Process) -> list[str]:
    """Its command line; none for a process that ended meanwhile (another test's child, say)."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def test_drill_server_killed_mid_answer_the_reaper_stores_the_answer_as_failed(alice, tmp_path, settings):
    from django.test import Client
    from websockets.sync.client import connect

    from feedback.heartbeat import REAPED_ERROR
    from feedback.models import Message
    from feedback.tasks import stale_answers_reap_task
    from models_registry.services import model_version_make_live, model_version_register
    from tests.e2e.servers import fake_model_server, session_of

    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.CHAT_STALE_AFTER_SECONDS = 2
    conversation = ConversationFactory(user=alice)
    frames: list[str] = []

    def ask(base: str) -> None:  # the user's browser: it sees the socket close when the server dies
        url = base.replace("http://", "ws://") + f"/ws/chat/{conversation.id}/"
        headers = {"Cookie": f"sessionid={session_of(alice)}"}
        with contextlib.suppress(Exception), connect(url, origin=base, additional_headers=headers) as ws:  # type: ignore[arg-type]
            ws.send(json.dumps({"type": "send", "content": "How do I make tea?"}))
            while True:
                frames.append(str(ws.recv(timeout=60)))

    def answer() -> Message | None:
        return Message.objects.filter(conversation=conversation, role="assistant").first()

    with fake_model_server(pieces=["Sure.\n\n", "1. Boil water.\n", "2. Add"], hang=True) as model_url:
        model_version_make_live(
            version=model_version_register(
                kind="policy", artifact_path="", checksums={}, backend="openai", base_url=model_url, model_name="fake"
            )
        )
        with platform_server(tmp_path, "killed-mid-answer", SERVING_OPENAI_ALLOWED_HOSTS="127.0.0.1",
                             CHAT_HEARTBEAT_SECONDS="0.2") as base:  # fmt: skip
            client = threading.Thread(target=ask, args=(base,), daemon=True)
            client.start()
            # Streaming, its two finished steps stored, and marked alive by the server process.
            assert wait_until(
                lambda: (a := answer()) is not None and a.steps.count() == 2 and a.heartbeat_at is not None,
                timeout=30,
            ), frames
            port = int(base.rsplit(":", 1)[1])
            (server,) = [p for p in psutil.Process().children(recursive=True) if str(port) in command_line(p)]
            server.kill()
            killed = time.monotonic()
            client.join(timeout=30)

    stuck = answer()
    assert stuck is not None
    assert stuck.status == "streaming"  # what a dead process leaves: the page would wait for ever
    assert wait_until(lambda: stale_answers_reap_task() == 1, timeout=30, interval=0.2)
    reaped_after = time.monotonic() - killed

    reaped = answer()
    assert reaped is not None
    assert (reaped.status, reaped.error) == ("failed", REAPED_ERROR)
    assert reaped.content == "Sure.\n\n1. Boil water."  # the steps stored before the kill
    assert stale_answers_reap_task() == 0
    # On the page: the steps, why it ended, and the way out (Regenerate), instead of an empty bubble.
    page = Client()
    page.force_login(alice)
    html = page.get(f"/c/{conversation.id}/").content.decode()
    article = html[html.index(f'id="answer-{reaped.id}"') :]
    article = article[: article.index("</article>")]
    assert 'data-status="failed"' in html
    assert "1. Boil water." in article
    assert "The server stopped while writing this answer" in article
    assert "Regenerate" in article
    report(
        "server killed mid-answer",
        {
            "answer": "stored failed with its 2 steps",
            "reaped after the kill": f"{reaped_after:.1f} s (stale after 2 s, heartbeat every 0.2 s)",
        },
    )
