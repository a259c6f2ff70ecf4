"""Training runs end to end in this process: feedback rows -> dataset snapshot -> TRL on the tiny
bootstrapped models (CPU, seconds) -> evaluation -> a registered candidate; and every way a run can
fail or stop without leaving a half-registered model behind."""

from __future__ import annotations

import threading
import time

import pytest

from models_registry.artifacts import resolve_artifact_path, verify_checksums
from models_registry.models import ModelVersion
from tests.helpers import (
    make_bootstrapped_live,
    no_checkpoints_left,
    run_here,
    soft_time_limit_from_step,
    training_run_start,
)
from tests.training_data import seed_rated_conversations
from training import runner, services
from training.models import TrainingRun

pytestmark = pytest.mark.django_db

# Tiny: a handful of optimiser steps and short generations, so each kind runs in seconds.
TINY = {
    "max_steps": 3,
    "batch_size": 4,
    "max_length": 128,
    "max_new_tokens": 8,
    "eval_prompts": 4,
    "eval_max_new_tokens": 8,
    "min_train_rows": 4,
    "test_fraction": 0.25,
}


@pytest.fixture
def live(bootstrapped, settings, tmp_path):
    """The bootstrapped policy and reward model, registered and live; runs write under tmp_path."""
    settings.TRAINING_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.TRAINING_DATASETS_DIR = tmp_path / "datasets"
    settings.TRAINING_HEARTBEAT_SECONDS = 0.1
    return make_bootstrapped_live(bootstrapped)


def start(kind: str, django_capture_on_commit_callbacks, **config) -> TrainingRun:
    return training_run_start(kind, django_capture_on_commit_callbacks, {**TINY, **config})


@pytest.mark.parametrize("kind", ["reward", "dpo", "kto", "ppo"])
def test_each_kind_trains_and_registers_a_candidate(kind, live, alice, django_capture_on_commit_callbacks):
    seed_rated_conversations(alice, 24, held_out=TINY["test_fraction"])  # evaluated on the test split
    run = run_here(start(kind, django_capture_on_commit_callbacks))

    assert run.status == "succeeded", f"{run.error_message}\n{run.error}\n{run.log_tail}"
    version = run.output_version
    assert version is not None
    assert version.status == ModelVersion.Status.CANDIDATE
    assert version.kind == ("reward" if kind == "reward" else "policy")
    assert version.parent == live[version.kind]
    verify_checksums(resolve_artifact_path(version.artifact_path), version.checksums)
    assert version.checksums.keys() >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert not any(name.startswith("checkpoint-") for name in version.checksums)
    # Lineage: the version names its run and the exact dataset.
    assert version.training_run == run
    assert version.metrics["lineage"]["dataset_hash"] == run.dataset.content_hash
    assert version.metrics["lineage"]["feedback_ids"] == run.dataset.source["feedback_ids"]
    assert list(version.events.values_list("from_status", "to_status", "actor", "reason")) == [
        ("", "candidate", None, f"trained by {kind} run {run.id}")
    ]
    assert run.dataset.rows("preference", "train") > 0
    # Progress and evaluation are stored on the run and on the version.
    assert run.progress == 1.0
    assert run.step > 0
    assert run.total_steps >= run.step
    assert run.metrics["train"]["steps"] > 0
    assert run.metrics["eval"] == version.metrics["eval"]
    if kind == "reward":
        assert set(run.metrics["eval"]) >= {"pairs", "accuracy", "mean_margin", "calibration_ece", "brier"}
        assert run.metrics["baseline"]["pairs"] == run.metrics["eval"]["pairs"]
    else:
        assert set(run.metrics["eval"]) >= {"prompts", "mean_reward", "win_rate", "kl", "mean_length"}
    assert "claimed by test:1" in run.log_tail
    # It never goes live by itself.
    assert ModelVersion.objects.get(kind=version.kind, status="live") == live[version.kind]


def test_a_worker_given_rank_variables_still_trains_in_its_own_process(
    live, alice, monkeypatch, django_capture_on_commit_callbacks
):
    """A pod of a cluster's job (Kubeflow's PyTorchJob, say) has RANK, WORLD_SIZE and the rest in its
    environment: a worker there took itself for rank 1 of 2 (half of each batch, no checkpoint saved,
    transformers waiting for a peer). They are dropped, and said so in the run's log."""
    import os

    inherited = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "10.9.9.9", "MASTER_PORT": "29500"}
    for name, value in inherited.items():
        monkeypatch.setenv(name, value)
    seed_rated_conversations(alice, 24, held_out=TINY["test_fraction"])
    run = run_here(start("reward", django_capture_on_commit_callbacks))

    assert run.status == "succeeded", f"{run.error_message}\n{run.error}\n{run.log_tail}"
    assert run.output_version is not None
    assert run.output_version.status == ModelVersion.Status.CANDIDATE
    assert "ignored RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the worker's environment" in run.log_tail
    assert not set(inherited) & set(os.environ)


def test_too_little_data_fails_fast_saying_how_much_there_is(live, django_capture_on_commit_callbacks, settings):
    run = run_here(start("reward", django_capture_on_commit_callbacks, min_train_rows=8))
    assert run.status == "failed"
    assert run.error_message.startswith("Too little data for a reward run: the train split has 0 preference pairs")
    assert "at least 8 are needed" in run.error_message
    assert run.dataset is not None  # the snapshot it looked at is kept, for the record
    assert run.output_version is None
    assert no_checkpoints_left(settings)


def test_a_redelivered_task_does_nothing(live, alice, django_capture_on_commit_callbacks):
    seed_rated_conversations(alice, 12)
    run = run_here(start("reward", django_capture_on_commit_callbacks))
    assert run.status == "succeeded"
    assert runner.execute(run.id, worker="test:2") == "skipped"
    assert ModelVersion.objects.filter(kind="reward").count() == 2
    run.refresh_from_db()
    assert run.worker == "test:1"


def test_cancel_stops_the_run_at_the_next_step_and_registers_nothing(
    live, alice, django_capture_on_commit_callbacks, monkeypatch, settings
):
    seed_rated_conversations(alice, 24)
    run = start("dpo", django_capture_on_commit_callbacks, max_steps=50)
    original = runner.Reporter.report

    def operator_cancels(self, progress):
        services.training_run_cancel(run_id=self.run_id)
        original(self, progress)

    monkeypatch.setattr(runner.Reporter, "report", operator_cancels)
    run = run_here(run)
    assert run.status == "cancelled"
    assert run.error_message == "Cancelled by an operator."
    assert run.step < 50
    assert "stopped: cancelled" in run.log_tail
    assert ModelVersion.objects.filter(kind="policy").count() == 1
    assert no_checkpoints_left(settings)


def test_the_soft_time_limit_fails_the_run_cleanly(
    live, alice, django_capture_on_commit_callbacks, monkeypatch, settings
):
    seed_rated_conversations(alice, 12)
    run = start("reward", django_capture_on_commit_callbacks)
    soft_time_limit_from_step(monkeypatch)
    run = run_here(run)
    assert run.status == "failed"
    assert run.error_message.startswith("The run took longer than its time limit")
    assert ModelVersion.objects.filter(kind="reward").count() == 1
    assert no_checkpoints_left(settings)


def test_a_failed_registration_leaves_no_model_behind(
    live, alice, django_capture_on_commit_callbacks, monkeypatch, settings
):
    seed_rated_conversations(alice, 12)
    run = start("reward", django_capture_on_commit_callbacks)

    def registry_down(**kwargs):
        raise RuntimeError("registry unavailable")

    monkeypatch.setattr(services, "model_version_register", registry_down)
    run = run_here(run)
    assert run.status == "failed"
    assert run.error_message == "Training failed: registry unavailable"
    assert "RuntimeError" in run.error
    assert ModelVersion.objects.filter(kind="reward").count() == 1
    assert no_checkpoints_left(settings)


def test_a_base_model_whose_files_changed_is_refused(live, alice, django_capture_on_commit_callbacks, tmp_path):
    seed_rated_conversations(alice, 12)
    run = start("reward", django_capture_on_commit_callbacks)
    ModelVersion.objects.filter(id=live["reward"].id).update(checksums={"config.json": "0" * 64})
    run = run_here(run)
    assert run.status == "failed"
    assert run.error_message.startswith(f"{live['reward'].label} cannot be used:")
    assert "does not match its recorded checksums" in run.error_message


def test_train_here_goes_through_the_same_service(live, alice, capsys):
    from django.core.management import call_command

    seed_rated_conversations(alice, 12)
    call_command(
        "train", "--kind", "reward", "--here", "--config", '{"max_steps": 2, "batch_size": 4, "min_train_rows": 4}'
    )
    out = capsys.readouterr().out
    run = TrainingRun.objects.get()
    assert run.status == "succeeded"
    assert f"Registered candidate {run.output_version.label}" in out
    assert "100% succeeded" in out


def test_kto_without_bad_examples_fails_saying_what_is_missing(live, alice, django_capture_on_commit_callbacks):
    from feedback.models import Feedback

    seed_rated_conversations(alice, 24)
    Feedback.objects.filter(rating=1).delete()  # only good answers are rated now
    run = run_here(start("kto", django_capture_on_commit_callbacks))
    assert run.status == "failed"
    assert run.error_message.startswith("Training failed: KTO needs both desirable and undesirable examples")
    assert "0 undesirable" in run.error_message
    assert ModelVersion.objects.filter(kind="policy").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_long_silent_phase_is_kept_alive_and_not_reaped(bootstrapped, settings, tmp_path, monkeypatch):
    """A phase that reports nothing for longer than the reaper's patience (here evaluation, as with a
    big model) is kept alive by the keepalive thread: the reaper, looking in the middle of it, spares
    the run, which then succeeds."""
    from datetime import timedelta

    from tests.factories import UserFactory

    settings.TRAINING_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.TRAINING_DATASETS_DIR = tmp_path / "datasets"
    settings.TRAINING_HEARTBEAT_SECONDS = 0.1
    live = make_bootstrapped_live(bootstrapped)
    seed_rated_conversations(UserFactory(username="rater"), 12)
    # Created directly: through the service, its task would be sent at once (no transaction to defer to).
    run = TrainingRun.objects.create(kind="reward", config={**TINY}, base_version=live["reward"])
    reaped_during_evaluation: list[list[int]] = []
    evaluate = runner._evaluate

    def slow_evaluation(*args, **kwargs):
        time.sleep(1.5)  # no progress report for 1.5 s
        reaped_during_evaluation.append(services.training_runs_reap(stale_after=timedelta(seconds=0.75)))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(runner, "_evaluate", slow_evaluation)
    run = run_here(run)

    assert reaped_during_evaluation == [[]]
    assert run.status == "succeeded", run.error_message
    assert not [t for t in threading.enumerate() if t.name.endswith("-keepalive")]
