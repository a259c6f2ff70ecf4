"""Helpers for tests that start other processes (workers, servers) against the test database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.processes import database_url, free_port  # noqa: F401  (tests import them from here)

PROJECT_VARIABLES = {"REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL"}


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without the project's service URLs, plus the test database and this
    process's SECRET_KEY (sessions and signatures made here must hold there)."""
    from django.conf import settings

    base = {k: v for k, v in os.environ.items() if k not in PROJECT_VARIABLES}
    return {**base, "DATABASE_URL": database_url(), "SECRET_KEY": settings.SECRET_KEY, **extra}


ROOT = Path(__file__).resolve().parent.parent


def start_worker(
    queues: str, env: dict[str, str], log: Path, *, cwd: Path = ROOT, args: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """A real Celery worker process (solo pool) on ``queues``, against the test database, logging to
    ``log``, started in ``cwd`` (the checkout by default); ``args`` go to ``celery worker``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "rlhf_site",
            "worker",
            "--pool=solo",
            "-Q",
            queues,
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
            *args,
        ],
        cwd=cwd,
        env=child_env(PYTHONPATH=str(ROOT), **env),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 60, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# Enough for the templates to stick (a numbered answer, then EOS), in a fifth of the full run's compute.
TEST_CONVERSATIONS = 1500
TEST_POLICY_STEPS = 200
TEST_BATCH_SIZE = 16
TEST_REWARD_STEPS = 10


@dataclass(frozen=True)
class Bootstrapped:
    policy_dir: Path
    reward_dir: Path
    summary: dict[str, Any]


def bootstrap_for_tests(root: str) -> Bootstrapped:
    """Train the session's tokenizer, policy and reward model (fewer steps than the command uses)."""
    from training.ml.bootstrap import bootstrap

    base = Path(root)
    summary = bootstrap(
        base / "policy",
        base / "reward",
        seed=0,
        conversations=TEST_CONVERSATIONS,
        policy_steps=TEST_POLICY_STEPS,
        batch_size=TEST_BATCH_SIZE,
        reward_steps=TEST_REWARD_STEPS,
    )
    for folder in (base / "policy", base / "reward"):
        for path in folder.rglob("*"):  # read-only: a test that tampers must copy first
            if path.is_file():
                path.chmod(0o444)
    return Bootstrapped(base / "policy", base / "reward", summary)


def make_bootstrapped_live(models: Bootstrapped) -> dict[str, Any]:
    """Register the bootstrapped policy and reward model with their checksums and make both live;
    returns the versions by kind."""
    from models_registry.artifacts import sha256_tree
    from models_registry.services import model_version_make_live, model_version_register

    versions = {}
    for kind, folder in (("policy", models.policy_dir), ("reward", models.reward_dir)):
        version = model_version_register(kind=kind, artifact_path=str(folder), checksums=sha256_tree(folder))
        versions[kind] = model_version_make_live(version=version)
    return versions


# --- Training runs, run in this process as a worker would ---------------------------------------------


def training_run_start(kind: str, django_capture_on_commit_callbacks: Any, config: dict[str, Any]) -> Any:
    """A queued training run (its task not sent), for ``run_here``."""
    from training import services

    with django_capture_on_commit_callbacks(execute=False):
        return services.training_run_create(kind=kind, config=config)


def run_here(run: Any) -> Any:
    """``run`` executed in this process, as a worker would, and read back."""
    from training import runner

    runner.execute(run.id, worker="test:1", task_id="task-1")
    run.refresh_from_db()
    return run


def soft_time_limit_from_step(monkeypatch: Any, step: int = 0) -> None:
    """The run's Celery soft time limit fires at its first progress report from ``step`` on (the
    exception Celery raises in the worker when the limit is reached)."""
    from celery.exceptions import SoftTimeLimitExceeded

    from training import runner

    def limit_reached(self: Any, progress: Any) -> None:
        if progress.step >= step:
            raise SoftTimeLimitExceeded()

    monkeypatch.setattr(runner.Reporter, "report", limit_reached)


def no_checkpoints_left(settings: Any) -> bool:
    root = Path(settings.TRAINING_ARTIFACTS_DIR)
    return not root.exists() or not any(p for p in root.rglob("*") if p.is_file())


@dataclass
class DatabaseTrips:
    """Trips made to the shared database threads (``core.asyncdb``), and how many had been made each
    time the policy was asked for an answer."""

    made: int = 0
    when_asked: list[int] = field(default_factory=list)


def count_database_trips(monkeypatch: Any, policy: Any) -> DatabaseTrips:
    """Count the trips to ``core.asyncdb``'s threads, and note the count when ``policy.stream`` is called."""
    from core import asyncdb

    trips, pool = DatabaseTrips(), asyncdb.executor()

    class Counting:
        def submit(self, func: Any, *args: Any, **kwargs: Any) -> Any:
            trips.made += 1
            return pool.submit(func, *args, **kwargs)

    monkeypatch.setattr(asyncdb, "executor", Counting)
    stream = policy.stream

    def counted(messages: Any, **kwargs: Any) -> Any:
        trips.when_asked.append(trips.made)
        return stream(messages, **kwargs)

    monkeypatch.setattr(policy, "stream", counted)
    return trips
