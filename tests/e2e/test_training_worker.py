"""A real Celery worker process on the ``training`` queue, through Redis, against PostgreSQL: from
the API call to a registered candidate; and a worker killed mid-run, caught by the reaper."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from models_registry.models import ModelVersion
from tests.factories import UserFactory
from tests.helpers import make_bootstrapped_live, start_worker, wait_until
from tests.training_data import seed_rated_conversations
from training import services
from training.models import TrainingRun

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]
TINY = {"max_steps": 3, "batch_size": 4, "max_length": 128, "min_train_rows": 4, "test_fraction": 0.25}


@pytest.fixture
def broker():
    """The training queue starts and ends empty, so a message left unacknowledged by the killed
    worker is not redelivered to a later test's worker."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = ("training", "unacked", "unacked_index")
    client.delete(*keys)
    yield client
    client.delete(*keys)


@pytest.fixture
def live(bootstrapped):
    return make_bootstrapped_live(bootstrapped)


@pytest.fixture
def operator_api(db) -> APIClient:
    user = UserFactory(username="trainer")
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_trainingrun", "start_trainingrun"]))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def worker(tmp_path, broker, live):
    log = tmp_path / "worker.log"
    process = start_worker(
        "training",
        {
            "REDIS_URL": settings.REDIS_URL,
            "TRAINING_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
            "TRAINING_DATASETS_DIR": str(tmp_path / "datasets"),
            "TRAINING_HEARTBEAT_SECONDS": "0.2",
            "HF_HUB_OFFLINE": "1",
            "TRL_EXPERIMENTAL_SILENCE": "1",
        },
        log,
    )
    process.log = log  # type: ignore[attr-defined]
    yield process
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


def test_a_run_posted_to_the_api_is_trained_by_a_worker_and_registered(worker, operator_api, alice):
    seed_rated_conversations(alice, 16)
    response = operator_api.post("/api/training/runs", {"kind": "reward", "config": TINY}, format="json")
    assert response.status_code == 201, response.json()
    run_id = response.json()["id"]

    def finished() -> bool:
        return not TrainingRun.objects.get(id=run_id).is_active

    done = wait_until(finished, timeout=240, interval=0.5)
    run = TrainingRun.objects.get(id=run_id)
    log = worker.log.read_text()
    assert done, f"the run is still {run.status} ({run.phase}); worker log:\n{log}"
    assert run.status == "succeeded", f"{run.error_message}\n{run.error}\n{log}"
    assert run.worker.endswith(str(worker.pid))
    version = run.output_version
    assert version.status == ModelVersion.Status.CANDIDATE
    assert version.kind == "reward"
    assert version.training_run == run
    body = operator_api.get(f"/api/training/runs/{run_id}").json()
    assert body["status"] == "succeeded"
    assert body["output_version"] == version.label
    assert body["dataset"]["content_hash"] == run.dataset.content_hash
    assert "training.tasks.training_run_execute" in log


def test_a_worker_killed_mid_run_is_caught_by_the_reaper(worker, operator_api, alice):
    seed_rated_conversations(alice, 16)
    response = operator_api.post(
        "/api/training/runs", {"kind": "dpo", "config": {**TINY, "max_steps": 100_000}}, format="json"
    )
    run_id = response.json()["id"]

    def training() -> bool:
        run = TrainingRun.objects.get(id=run_id)
        return run.phase == "training" and run.step > 0

    assert wait_until(training, timeout=240, interval=0.2), worker.log.read_text()
    worker.kill()
    worker.wait(timeout=30)
    # Nothing reports any more; a reaper with a short horizon sees the heartbeat go stale.
    assert wait_until(lambda: bool(services.training_runs_reap(stale_after=timedelta(seconds=2))), timeout=30)
    run = TrainingRun.objects.get(id=run_id)
    assert run.status == "failed"
    assert "stopped reporting" in run.error_message
    assert run.output_version is None
    assert ModelVersion.objects.filter(kind="policy").count() == 1
