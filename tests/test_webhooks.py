"""Signed webhooks: every deployment event and monitor decision is delivered, after the transaction
commits, to each REGISTRY_WEBHOOK_URLS receiver, signed with HMAC-SHA256; failures are retried."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from models_registry import webhooks
from models_registry.services import model_version_deploy, model_version_make_live
from models_registry.tasks import webhook_deliver
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
def receiver(settings):
    receiver = Receiver()
    settings.REGISTRY_WEBHOOK_URLS = [receiver.url]
    settings.REGISTRY_WEBHOOK_SECRET = SECRET
    settings.REGISTRY_FOUR_EYES = False
    yield receiver
    receiver.close()


def deliver(callbacks, monkeypatch) -> None:
    """Run the on-commit callbacks; each send of a delivery task runs the task here, as a worker would."""
    sent = []
    monkeypatch.setattr(webhooks.current_app, "send_task", lambda name, args: sent.append((name, args)))
    for callback in callbacks:
        callback()
    for name, args in sent:
        assert name == webhooks.DELIVER_TASK
        webhook_deliver.apply(args=args).get()


def test_a_deploy_is_delivered_signed_after_the_commit(receiver, django_capture_on_commit_callbacks, monkeypatch):
    live = model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))
    candidate = ModelVersionFactory(number=2, status="approved")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        model_version_deploy(version_id=candidate.pk, actor=None, reason="ship it")
        assert receiver.deliveries == []  # nothing leaves inside the transaction
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
    assert live.pk


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


def test_a_failing_receiver_is_retried_until_it_answers(settings):
    receiver = Receiver(statuses=[500, 503])
    settings.REGISTRY_WEBHOOK_SECRET = SECRET
    try:
        body = webhooks.encode("deployment_event", {"version": "policy:2"}).decode()
        result = webhook_deliver.apply(args=[receiver.url, "deployment_event", body, "delivery-1"])
        assert result.get() == 204
    finally:
        receiver.close()
    assert len(receiver.deliveries) == 3
    assert {d["headers"]["X-RLHF-Delivery"] for d in receiver.deliveries} == {"delivery-1"}


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
def test_a_deploy_while_the_broker_is_away_is_committed_and_the_lost_notice_logged(
    receiver, broker_unreachable, caplog
):
    model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))
    candidate = ModelVersionFactory(number=2, status="approved")

    model_version_deploy(version_id=candidate.pk, actor=None, reason="ship it")  # no error for the operator

    candidate.refresh_from_db()
    assert candidate.status == "live"
    assert f"webhook deployment_event to {receiver.url} not sent: the broker is unreachable" in caplog.text
    assert receiver.deliveries == []
