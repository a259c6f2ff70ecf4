from __future__ import annotations

import re

import pytest
from django.test import Client

from tests.factories import ModelVersionFactory


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


TOKEN = "test-scrape-token"


@pytest.fixture(autouse=True)
def _metrics_token(settings) -> None:
    settings.METRICS_TOKEN = TOKEN


def scrape() -> str:
    response = Client(REMOTE_ADDR="203.0.113.9").get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    return response.content.decode()


def test_feedback_counters_move_after_a_post(api, answer, django_capture_on_commit_callbacks):
    answer.model_version = ModelVersionFactory(number=41)
    answer.save()
    labels = {"target": "message", "model_version": "policy:41"}
    before = scrape()

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            "/api/assistant/feedback", {"message_id": str(answer.id), "thumbs": "down", "rating": 2}, format="json"
        )
    assert response.status_code == 201
    after = scrape()

    for kind, value in (("thumbs", "down"), ("rating", "2")):
        delta = sample(after, "rlhf_feedback_total", kind=kind, value=value, **labels) - sample(
            before, "rlhf_feedback_total", kind=kind, value=value, **labels
        )
        assert delta == 1, kind
    assert sample(after, "rlhf_feedback_rating_count", model_version="policy:41") == 1
    assert sample(after, "rlhf_user_satisfaction_score_count") >= 1
    assert "django_http_requests_total_by_method_total" in after


def test_a_rolled_back_write_is_not_counted(api, answer, django_capture_on_commit_callbacks):
    before = sample(scrape(), "rlhf_feedback_total", kind="rating", value="6")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        api.post("/api/assistant/feedback", {"message_id": str(answer.id), "rating": 6}, format="json")
    assert callbacks == []
    assert sample(scrape(), "rlhf_feedback_total", kind="rating", value="6") == before


def test_metrics_are_closed_to_other_addresses(db):
    response = Client(REMOTE_ADDR="203.0.113.9").get("/metrics")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_outside_debug_an_allowed_address_is_not_enough(db, settings):
    settings.DEBUG = False
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1"]
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 403
    settings.METRICS_TOKEN = None
    response = Client(REMOTE_ADDR="127.0.0.1").get("/metrics")
    assert response.status_code == 403
    assert response.json()["error"]["message"] == (
        "Metrics are not open to this client. Set METRICS_TOKEN and scrape with 'Authorization: Bearer <token>'."
    )


def test_a_metrics_token_opens_them_from_anywhere(db, settings):
    settings.METRICS_TOKEN = "scrape-me"
    client = Client(REMOTE_ADDR="203.0.113.9")
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200


def test_with_debug_on_allowed_addresses_can_be_networks(db, settings):
    settings.DEBUG = True
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 403


def test_training_runs_are_reported_from_the_database(db):
    from datetime import timedelta

    from django.utils import timezone

    from training.models import TrainingRun

    TrainingRun.objects.create(kind="reward", status="failed")
    TrainingRun.objects.create(kind="reward", status="failed")
    running = TrainingRun.objects.create(
        kind="dpo", status="running", progress=0.25, heartbeat_at=timezone.now() - timedelta(seconds=30)
    )
    text = scrape()
    assert sample(text, "rlhf_training_runs", kind="reward", status="failed") == 2
    assert sample(text, "rlhf_training_runs", kind="dpo", status="running") == 1
    assert sample(text, "rlhf_training_run_progress", run=str(running.id), kind="dpo") == 0.25
    assert 29 <= sample(text, "rlhf_training_run_heartbeat_age_seconds", run=str(running.id), kind="dpo") < 90


def test_a_training_runs_heartbeat_age_is_measured_on_the_database_clock(db, monkeypatch):
    """The heartbeat is stamped by the database: a scraping process whose clock runs ten minutes ahead
    still reports a run beaten just now as fresh, not ten minutes silent."""
    from datetime import timedelta

    from django.utils import timezone

    from training import services
    from training.models import TrainingRun

    run = TrainingRun.objects.create(kind="kto")
    assert services.training_run_claim(run_id=run.id, worker="host:1")
    ahead = timezone.now() + timedelta(minutes=10)
    monkeypatch.setattr(timezone, "now", lambda: ahead)
    assert 0 <= sample(scrape(), "rlhf_training_run_heartbeat_age_seconds", run=str(run.id), kind="kto") < 60


def test_monitor_decisions_are_exported_from_the_database(db, settings):
    from models_registry.services import canary_start, model_version_make_live
    from tests.monitoring_data import rate
    from training.monitor.service import monitor_pass

    settings.REGISTRY_FOUR_EYES = False
    live = model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))
    canary = canary_start(version_id=ModelVersionFactory(number=2, status="approved").id, share=0.5, actor=None)
    rate(canary.version, 150, 0.6)
    rate(live, 150, 0.62)
    monitor_pass()
    monitor_pass()

    text = scrape()
    assert sample(text, "rlhf_monitor_decisions", kind="policy", decision="continue") == 2
    assert sample(text, "rlhf_monitor_latest_decision", kind="policy", version="policy:2", decision="continue") == 1
    estimate = sample(text, "rlhf_monitor_positive_rate_difference", version="policy:2", bound="estimate")
    assert estimate == pytest.approx(0.6 - 0.62)
    assert sample(text, "rlhf_monitor_positive_rate_difference", version="policy:2", bound="low") < estimate


PROCESS_THAT_EXITS = """
from prometheus_client import Counter, Gauge
Gauge("rlhf_serving_live_version", "", ["kind"], multiprocess_mode="liveall").labels("policy").set(7)
Gauge("rlhf_chat_active_streams", "", ["model_version"], multiprocess_mode="livesum").labels("policy:7").set(3)
Counter("rlhf_chat_generated_tokens", "", ["model_version"]).labels("policy:7").inc(40)
"""


def test_a_dead_server_process_leaves_its_counts_but_not_its_gauges(db, tmp_path, monkeypatch):
    """With several processes, /metrics adds up their files; one that died (uvicorn replaced it) keeps
    its counters in the totals, but its live gauges (the version it served, its open streams) go."""
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", PROCESS_THAT_EXITS], env=env, check=True, timeout=60)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert any(name.startswith("gauge_liveall_") for name in before)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    text = scrape()

    assert sample(text, "rlhf_chat_generated_tokens_total", model_version="policy:7") == 40.0
    assert "rlhf_serving_live_version{" not in text
    assert "rlhf_chat_active_streams{" not in text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("gauge_live")] == []
    assert any(p.name.startswith("counter_") for p in tmp_path.iterdir())


def test_open_streams_are_summed_over_the_live_processes():
    from feedback.metrics import ACTIVE_STREAMS

    assert ACTIVE_STREAMS._multiprocess_mode == "livesum"


def test_a_running_process_keeps_its_gauges(db, tmp_path):
    """Only processes that no longer run are forgotten: this one's files stay."""
    import os

    from rlhf_site.metrics import forget_dead_processes

    mine = tmp_path / f"gauge_liveall_{os.getpid()}.db"
    mine.write_bytes(b"")
    gone = tmp_path / "gauge_livesum_999999999.db"  # beyond any pid this machine hands out
    gone.write_bytes(b"")
    assert forget_dead_processes(str(tmp_path)) == [999999999]
    assert mine.exists()
    assert not gone.exists()
