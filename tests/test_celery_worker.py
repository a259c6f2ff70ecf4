"""A real Celery worker process picks a task up through the broker the settings select."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from kombu import Connection

from core.models import IdempotencyRecord
from rlhf_site.broker import filesystem_transport_options
from rlhf_site.celery import app
from tests.factories import UserFactory
from tests.helpers import start_worker, wait_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db(transaction=True)


def expired_record() -> IdempotencyRecord:
    record = IdempotencyRecord.objects.create(
        user=UserFactory(username="old-key"), scope="feedback", key="k", fingerprint="f", status_code=201, body={}
    )
    IdempotencyRecord.objects.filter(id=record.id).update(created_at=timezone.now() - timedelta(days=3))
    return record


def run_through_worker(
    broker_url: str, transport_options: dict, env: dict[str, str], tmp_path: Path, *, cwd: Path = ROOT
) -> None:
    record = expired_record()
    worker = start_worker("default", env, tmp_path / "worker.log", cwd=cwd)
    try:
        with Connection(broker_url, transport_options=transport_options) as broker:
            app.send_task("core.tasks.purge_idempotency_keys", connection=broker, queue="default")
        done = wait_until(lambda: not IdempotencyRecord.objects.filter(id=record.id).exists())
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    log = (tmp_path / "worker.log").read_text()
    assert done, f"the worker did not run the task; its log:\n{log}"
    assert "core.tasks.purge_idempotency_keys" in log


def git_status() -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def test_a_worker_runs_a_task_through_the_filesystem_broker_and_writes_nothing_outside_its_folder(tmp_path):
    folder, elsewhere = tmp_path / "celery", tmp_path / "cwd"
    elsewhere.mkdir()
    before = git_status()

    run_through_worker(
        "filesystem://",
        filesystem_transport_options(folder),
        {"CELERY_FILESYSTEM_DIR": str(folder)},
        tmp_path,
        cwd=elsewhere,
    )

    assert list(elsewhere.iterdir()) == []  # kombu's ./control went under CELERY_FILESYSTEM_DIR
    assert (folder / "control" / "default.exchange").exists()
    assert git_status() == before  # nothing written into the checkout, by the worker or this process


@pytest.mark.redis
def test_a_worker_runs_a_task_through_redis(tmp_path):
    run_through_worker(settings.REDIS_URL, {}, {"REDIS_URL": settings.REDIS_URL}, tmp_path)
