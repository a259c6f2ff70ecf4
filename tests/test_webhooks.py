"""Signed webhooks: every deployment event and monitor decision is delivered, after the transaction
commits, to each REGISTRY_WEBHOOK_URLS receiver, signed with HMAC-SHA256; failures are retried. An
outbox: each delivery is a row written with the change, kept while the broker is away and queued
again by the sweep, marked delivered or failed, and sent again from the admin."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.db import transaction
from django.utils import timezone

from models_registry import webhooks
from models_registry.models import WebhookDelivery
from models_registry.services import model_version_deploy, model_version_make_live
from models_registry.tasks import MAX_RETRIES, webhook_deliver, webhook_send
from tests.factories import ModelVersionFactory

pytestmark = pytest.mark.django_db
SECRET = "webhook-secret"


class Receiver:
    """A loopback HTTP server that records each POST and answers with the next scripted status."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.deliveries: list[dict] = []
        self.statuses = list(statuses or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.deliveries.append({"headers": dict(self.headers), "body": body})
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted_receiver(settings):
    """Makes receivers answering with the given statuses (then 204), for deliveries signed with
    SECRET; each is closed after the test."""
    settings.REGISTRY_WEBHOOK_SECRET = SECRET
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def receiver(settings):
    receiver = Receiver()
    settings.REGISTRY_WEBHOOK_URLS = [receiver.url]
    settings.REGISTRY_WEBHOOK_SECRET = SECRET
    settings.REGISTRY_FOUR_EYES = False
    yield receiver
    receiver.close()


def worker_runs_sends(monkeypatch) -> list[tuple[str, list]]:
    """Each send of a task is recorded, for ``run_sent`` to run it here, as a worker would."""
    sent: list[tuple[str, list]] = []
    monkeypatch.setattr(webhooks.current_app, "send_task", lambda name, args: sent.append((name, args)))
    return sent


def run_sent(sent) -> list[str]:
    results = []
    while sent:
        name, args = sent.pop(0)
        assert name == webhooks.SEND_TASK
        results.append(webhook_send.apply(args=args).get())
    return results


def deliver(callbacks, monkeypatch) -> None:
    """Run the on-commit callbacks, then the delivery tasks they queued."""
    sent = worker_runs_sends(monkeypatch)
    for callback in callbacks:
        callback()
    run_sent(sent)


def delivery(url: str, **fields) -> WebhookDelivery:
    body = webhooks.encode("deployment_event", {"version": "policy:2"}).decode()
    return WebhookDelivery.objects.create(url=url, event_type="deployment_event", body=body, **fields)


def test_a_deploy_is_delivered_signed_after_the_commit(receiver, django_capture_on_commit_callbacks, monkeypatch):
    live = model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))
    WebhookDelivery.objects.all().delete()  # the make-live's own notice: not the point here
    candidate = ModelVersionFactory(number=2, status="approved")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        model_version_deploy(version_id=candidate.pk, actor=None, reason="ship it")
        assert receiver.deliveries == []  # nothing leaves inside the transaction
        assert WebhookDelivery.objects.filter(status="pending").count() == 2  # but the outbox has them
    deliver(callbacks, monkeypatch)

    events = [json.loads(d["body"]) for d in receiver.deliveries]
    assert [(e["type"], e["data"]["version"], e["data"]["from_status"], e["data"]["to_status"]) for e in events] == [
        ("deployment_event", "policy:1", "live", "retired"),
        ("deployment_event", "policy:2", "approved", "live"),
    ]
    assert events[1]["data"]["reason"] == "ship it"
    for delivery in receiver.deliveries:
        expected = "sha256=" + hmac.new(SECRET.encode(), delivery["body"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(delivery["headers"]["X-RLHF-Signature"], expected)
        assert delivery["headers"]["X-RLHF-Event"] == "deployment_event"
    rows = WebhookDelivery.objects.order_by("created_at")
    assert [(r.status, r.attempts, r.last_error) for r in rows] == [("delivered", 1, "")] * 2
    assert all(r.finished_at is not None and r.enqueued_at is not None for r in rows)
    assert {d["headers"]["X-RLHF-Delivery"] for d in receiver.deliveries} == {str(r.pk) for r in rows}
    assert live.pk


def test_a_change_rolled_back_leaves_no_delivery(receiver, django_capture_on_commit_callbacks):
    def failing_change() -> None:
        with transaction.atomic():
            model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))
            raise RuntimeError("the change fails after its notice was written")

    with django_capture_on_commit_callbacks(execute=False) as callbacks, pytest.raises(RuntimeError):
        failing_change()
    assert callbacks == []
    assert not WebhookDelivery.objects.exists()


def test_a_monitor_decision_is_delivered_too(receiver, django_capture_on_commit_callbacks, monkeypatch):
    from models_registry.services import canary_start
    from tests.monitoring_data import rate
    from training.monitor.service import monitor_pass

    live = model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))
    with django_capture_on_commit_callbacks(execute=False):
        canary = canary_start(version_id=ModelVersionFactory(number=2, status="approved").pk, share=0.5, actor=None)
    rate(canary.version, 10, 1.0)
    rate(live, 10, 1.0)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        monitor_pass()
    deliver(callbacks, monkeypatch)

    (delivery,) = receiver.deliveries
    payload = json.loads(delivery["body"])
    assert (payload["type"], payload["data"]["decision"], payload["data"]["version"]) == (
        "monitor_decision",
        "not_enough_data",
        "policy:2",
    )


def test_a_failing_receiver_is_retried_until_it_answers(scripted_receiver):
    receiver = scripted_receiver([500, 503])
    row = delivery(receiver.url)
    assert webhook_send.apply(args=[str(row.pk)]).get() == "delivered"
    assert len(receiver.deliveries) == 3
    assert {d["headers"]["X-RLHF-Delivery"] for d in receiver.deliveries} == {str(row.pk)}
    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error) == ("delivered", 3, "")


def test_a_receiver_failing_every_try_is_given_up_with_its_last_error(scripted_receiver, caplog):
    receiver = scripted_receiver([500] * MAX_RETRIES + [502])
    row = delivery(receiver.url)
    assert webhook_send.apply(args=[str(row.pk)]).get() == "failed"
    assert len(receiver.deliveries) == MAX_RETRIES + 1
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("failed", MAX_RETRIES + 1)
    assert row.last_error == f"{receiver.url} answered HTTP 502"
    assert row.finished_at is not None
    assert f"given up after {MAX_RETRIES + 1} tries" in caplog.text


def test_a_delivery_no_longer_pending_is_not_sent_again(scripted_receiver):
    receiver = scripted_receiver()
    row = delivery(receiver.url, status="delivered", attempts=1)
    assert webhook_send.apply(args=[str(row.pk)]).get() == "skipped"  # a second task for it, say
    assert receiver.deliveries == []
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("delivered", 1)


def test_a_task_queued_before_the_outbox_still_delivers(scripted_receiver):
    receiver = scripted_receiver()
    body = webhooks.encode("deployment_event", {"version": "policy:2"}).decode()
    assert webhook_deliver.apply(args=[receiver.url, "deployment_event", body, "delivery-1"]).get() == 204
    assert [d["headers"]["X-RLHF-Delivery"] for d in receiver.deliveries] == ["delivery-1"]


def test_the_sweep_queues_pending_deliveries_without_a_task_and_deletes_old_ones(settings, monkeypatch):
    settings.REGISTRY_WEBHOOK_SWEEP_SECONDS = 60
    settings.REGISTRY_WEBHOOK_REQUEUE_AFTER_SECONDS = 3600
    settings.REGISTRY_WEBHOOK_KEEP_DAYS = 30
    now = timezone.now()

    def aged(row, *, created_s, enqueued_s=None, finished_days=None):
        WebhookDelivery.objects.filter(pk=row.pk).update(
            created_at=now - timedelta(seconds=created_s),
            enqueued_at=None if enqueued_s is None else now - timedelta(seconds=enqueued_s),
            finished_at=None if finished_days is None else now - timedelta(days=finished_days),
        )
        return row.pk

    url = "http://127.0.0.1:9/hook"
    never_queued = aged(delivery(url), created_s=120)
    just_made = aged(delivery(url), created_s=5)  # its own on-commit send is still on its way
    queued = aged(delivery(url), created_s=600, enqueued_s=590)  # its task is retrying
    lost = aged(delivery(url), created_s=7200, enqueued_s=7100)
    old_done = aged(delivery(url, status="delivered"), created_s=40 * 86400, enqueued_s=1, finished_days=40)
    old_failed = aged(delivery(url, status="failed"), created_s=40 * 86400, enqueued_s=1, finished_days=35)
    recent_done = aged(delivery(url, status="delivered"), created_s=86400, enqueued_s=1, finished_days=1)
    sent = worker_runs_sends(monkeypatch)

    assert webhooks.outbox_sweep() == {"queued": 2, "purged": 2}

    assert sorted(args[0] for _, args in sent) == sorted([str(never_queued), str(lost)])
    left = set(WebhookDelivery.objects.values_list("pk", flat=True))
    assert left == {never_queued, just_made, queued, lost, recent_done}
    assert WebhookDelivery.objects.get(pk=never_queued).enqueued_at is not None
    assert old_done not in left
    assert old_failed not in left


def test_the_admin_sends_failed_deliveries_again(admin_client_, monkeypatch, django_capture_on_commit_callbacks):
    url = "http://127.0.0.1:9/hook"
    failed = delivery(url, status="failed", attempts=MAX_RETRIES + 1, last_error="HTTP 502", finished_at=timezone.now())
    done = delivery(url, status="delivered", attempts=1, finished_at=timezone.now())
    sent = worker_runs_sends(monkeypatch)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client_.post(
            "/admin/models_registry/webhookdelivery/",
            {"action": "send_again", "_selected_action": [str(failed.pk), str(done.pk)]},
            follow=True,
        )
    assert "1 deliveries queued again (1 not failed, left alone)." in response.content.decode()
    assert [args for _, args in sent] == [[str(failed.pk)]]
    failed.refresh_from_db()
    done.refresh_from_db()
    assert (failed.status, failed.finished_at, done.status) == ("pending", None, "delivered")
    assert failed.enqueued_at is not None


def test_sending_again_needs_the_deploy_permission(db):
    from django.contrib.auth.models import Permission
    from django.test import Client

    from tests.factories import UserFactory

    viewer = UserFactory(username="viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_webhookdelivery"))
    failed = delivery("http://127.0.0.1:9/hook", status="failed", finished_at=timezone.now())
    client = Client()
    client.force_login(viewer)

    page = client.get("/admin/models_registry/webhookdelivery/")
    assert page.status_code == 200
    assert "send_again" not in page.content.decode()
    action = {"action": "send_again", "_selected_action": [str(failed.pk)]}
    client.post("/admin/models_registry/webhookdelivery/", action)
    failed.refresh_from_db()
    assert failed.status == "failed"


def test_a_malformed_url_fails_at_once_with_its_error(settings):
    row = delivery("http://[::1/hook")
    assert webhook_send.apply(args=[str(row.pk)]).get() == "failed"
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_error


def test_each_try_stamps_the_delivery_so_the_sweep_leaves_a_retrying_one_alone(
    scripted_receiver, settings, monkeypatch
):
    """A task still retrying after REGISTRY_WEBHOOK_REQUEUE_AFTER_SECONDS since its first queueing is
    not lost: its last try stamped the row."""
    receiver = scripted_receiver([503])
    settings.REGISTRY_WEBHOOK_REQUEUE_AFTER_SECONDS = 900
    row = delivery(receiver.url)
    WebhookDelivery.objects.filter(pk=row.pk).update(enqueued_at=timezone.now() - timedelta(seconds=1000))
    monkeypatch.setattr(webhook_send, "retry", lambda **kwargs: RuntimeError("retry queued for later"))
    with pytest.raises(RuntimeError, match="retry queued for later"):  # the first try failed
        webhook_send.apply(args=[str(row.pk)]).get()
    row.refresh_from_db()
    assert row.status == "pending"
    assert timezone.now() - row.enqueued_at < timedelta(seconds=60)
    sent = worker_runs_sends(monkeypatch)
    assert webhooks.outbox_sweep()["queued"] == 0
    assert sent == []


def test_no_url_no_delivery(settings, django_capture_on_commit_callbacks):
    settings.REGISTRY_WEBHOOK_URLS = []
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))
    assert callbacks == []


def test_urls_without_a_secret_stop_start_up(tmp_path):
    from tests.test_settings import clean_env, run_settings

    result = run_settings(clean_env(VAR_DIR=str(tmp_path), REGISTRY_WEBHOOK_URLS="http://x/hook"), "print(1)")
    assert result.returncode != 0
    assert "REGISTRY_WEBHOOK_SECRET" in result.stderr.strip().splitlines()[-1]


@pytest.mark.django_db(transaction=True)
def test_a_deploy_while_the_broker_is_away_is_committed_and_its_notices_sent_once_it_is_back(
    receiver, broker_unreachable, caplog, monkeypatch, settings
):
    model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))
    WebhookDelivery.objects.all().delete()  # the make-live's own notice: not the point here
    caplog.clear()
    candidate = ModelVersionFactory(number=2, status="approved")

    model_version_deploy(version_id=candidate.pk, actor=None, reason="ship it")  # no error for the operator

    candidate.refresh_from_db()
    assert candidate.status == "live"
    assert caplog.text.count("1 webhook(s) kept in the outbox for later: the broker is unreachable") == 2
    assert receiver.deliveries == []
    kept = WebhookDelivery.objects.all()
    assert [(r.status, r.enqueued_at) for r in kept] == [("pending", None)] * 2

    broker_unreachable()  # the broker is back; a minute later the sweep runs
    settings.REGISTRY_WEBHOOK_SWEEP_SECONDS = 0
    sent = worker_runs_sends(monkeypatch)
    assert webhooks.outbox_sweep()["queued"] == 2
    assert run_sent(sent) == ["delivered", "delivered"]
    events = [json.loads(d["body"])["data"] for d in receiver.deliveries]
    assert sorted((e["version"], e["to_status"]) for e in events) == [("policy:1", "retired"), ("policy:2", "live")]
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"delivered"}
