"""What a worker does with a training run, start to finish (DESIGN.md, flow 3).

claim (conditional UPDATE) -> build a ``DatasetSnapshot`` -> check there is enough data -> train with
TRL behind ``training.ml`` (a callback reports progress and heartbeats, and stops on cancel) ->
evaluate on the held-out split -> move the checkpoint into place -> register a candidate version and
mark the run succeeded in one transaction. No transaction is held open while training; every failure
is recorded on the run with a readable message, and a checkpoint that was not registered is removed.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db.models import Q

from models_registry.artifacts import resolve_artifact_path, sha256_tree, verify_checksums
from models_registry.exceptions import RegistryError
from models_registry.models import ModelVersion
from training import services
from training.exceptions import DatasetInvalidated, RunCancelled, RunFailure
from training.ml.config import DATASET_FOR_KIND, ConfigError, TrainConfig, validate_config
from training.ml.progress import TrainResult
from training.models import Cycle, DatasetSnapshot, TrainingRun
from training.processor import ProcessorOptions, snapshot_build
from training.runner.reporter import _DATASET_SHARE, _TRAIN_SHARE, Reporter

__all__ = ["Reporter", "execute"]

logger = logging.getLogger(__name__)


def _model_dir(version: ModelVersion) -> Path:
    """The version's folder, after checking its files are the ones registered."""
    folder = resolve_artifact_path(version.artifact_path)
    try:
        verify_checksums(folder, version.checksums)
    except RegistryError as exc:
        raise RunFailure(f"{version.label} cannot be used: {exc.message}", code="artifact_invalid") from exc
    return folder


def _check_enough_data(run: TrainingRun, snapshot: DatasetSnapshot, config: TrainConfig) -> None:
    dataset = DATASET_FOR_KIND[run.kind]
    rows = snapshot.rows(dataset, "train")
    # PPO generates a rollout of batch_size x gradient_accumulation_steps prompts per step.
    batch = config.batch_size * (config.gradient_accumulation_steps if run.kind == TrainingRun.Kind.PPO else 1)
    needed = max(config.min_train_rows, batch)
    if rows < needed:
        what = {
            "preference": "preference pairs (comparisons, or answers to one prompt rated differently)",
            "unpaired": "rated answers (thumbs, or ratings outside the neutral band)",
            "prompts": "user prompts",
        }[dataset]
        raise RunFailure(
            f"Too little data for a {run.kind} run: the train split has {rows} {what}; at least {needed} are needed"
            f" (min_train_rows {config.min_train_rows}, one batch {batch}). Collect more feedback or"
            " lower min_train_rows.",
            code="too_little_data",
        )


def _evaluate(
    run: TrainingRun, config: TrainConfig, snapshot: DatasetSnapshot, output: Path, base: Path, reward: Path | None
) -> dict[str, Any]:
    from training.ml.evaluation import evaluate_policy, evaluate_rewards

    root = Path(snapshot.path)
    if run.kind == TrainingRun.Kind.REWARD:
        # The reward model it continued (not a policy it put a new head on) is scored on the same pairs.
        baseline = run.base_version is not None and run.base_version.kind == ModelVersion.Kind.REWARD
        scored = evaluate_rewards(
            [output, base] if baseline else [output],
            pairs_path=root / "preference" / "test.jsonl",
            max_length=config.max_length,
        )
        result: dict[str, Any] = {"eval": scored[0]}
        if baseline:
            result["baseline"] = scored[1]
        return result
    if reward is None:
        return {"eval": {"skipped": "No live reward model: mean reward, win rate and KL were not measured."}}
    return {
        "eval": evaluate_policy(
            model_dir=output,
            reference_dir=base,
            reward_dir=reward,
            prompts_path=root / "prompts" / "test.jsonl",
            max_prompts=config.eval_prompts,
            max_new_tokens=config.eval_max_new_tokens,
            seed=config.seed,
        )
    }


@dataclass
class _Job:
    """One run in a worker: what the phases share."""

    run: TrainingRun
    reporter: Reporter
    staging: Path
    target: Path

    @classmethod
    def start(cls, run_id: int, worker: str) -> _Job:
        run = TrainingRun.objects.select_related("base_version", "reward_version", "judge_version", "dataset").get(
            id=run_id
        )
        reporter = Reporter(
            run_id, heartbeat_seconds=settings.TRAINING_HEARTBEAT_SECONDS, log_lines=settings.TRAINING_LOG_TAIL_LINES
        )
        reporter.log(f"{run.kind} run claimed by {worker}")
        artifacts = Path(settings.TRAINING_ARTIFACTS_DIR) / run.output_kind
        return cls(run, reporter, staging=artifacts / f".run-{run.id}-staging", target=artifacts / f"run-{run.id}")


def execute(run_id: int, *, worker: str, task_id: str = "") -> str:
    """Run the training run ``run_id`` if this worker can claim it; returns its final status, or
    ``"skipped"`` when another delivery already took it (or it is gone or finished).

    Phases: 1. ``_prepare`` (config, dataset snapshot, enough data, the base models' checksums);
    2. ``_train`` (TRL behind ``training.ml``); 3. ``_publish`` (evaluate, move the checkpoint into
    place, register the candidate and mark the run succeeded in one transaction). Whatever stops a
    phase ends the run through ``_outcome``. A heartbeat thread keeps the run alive throughout."""
    if not services.training_run_claim(run_id=run_id, worker=worker, task_id=task_id):
        logger.info("training run %s: not claimed (already taken, finished or gone)", run_id)
        return "skipped"
    job = _Job.start(run_id, worker)
    registered = False
    try:
        with job.reporter.keepalive():
            prepared = _prepare(job)
            result = _train(job, prepared)
            version = _publish(job, prepared, result)
        if version is None:  # cancelled or reaped meanwhile; the finally below removes the checkpoint
            return TrainingRun.objects.values_list("status", flat=True).get(id=run_id)
        registered = True
        logger.info("training run %s registered %s", run_id, version.label)
        return TrainingRun.Status.SUCCEEDED
    except Exception as exc:
        return _end(job, _outcome(exc))
    finally:
        # A checkpoint no version points at is removed, so nothing half-registered is left behind.
        shutil.rmtree(job.staging, ignore_errors=True)
        if not registered:
            shutil.rmtree(job.target, ignore_errors=True)
        _notify_cycle(run_id)


def _notify_cycle(run_id: int) -> None:
    """A stage of a cycle ended: let the cycle take its next step now (the beat sweep would later)."""
    cycle_id = (
        Cycle.objects.filter(Q(reward_run_id=run_id) | Q(policy_run_id=run_id)).values_list("id", flat=True).first()
    )
    if cycle_id is not None:
        services.cycle_advance_send(cycle_id)


@dataclass(frozen=True)
class _Prepared:
    config: TrainConfig
    snapshot: DatasetSnapshot
    base: Path  # the checked folder of the version the run starts from
    reward: Path | None  # the checked folder of the reward model that scores it (PPO's rollouts)
    judge: Path | None  # the checked folder of the reward model that evaluates the policy it makes


def _prepare(job: _Job) -> _Prepared:
    run, reporter = job.run, job.reporter
    try:
        config = validate_config(run.kind, run.config)
    except ConfigError as exc:
        raise RunFailure(f"The stored config is invalid: {exc}", code="invalid_config") from exc
    if run.dataset is not None:  # given when the run was created (a cycle's policy run: its reward run's)
        snapshot = run.dataset
        _check_usable(snapshot)
        reporter.log(f"dataset {snapshot.pk} ({snapshot.content_hash[:12]}), given: {snapshot.row_counts}")
    else:
        reporter.phase("building dataset", 0.0)
        snapshot = snapshot_build(
            options=ProcessorOptions.from_config(config),
            root=Path(settings.TRAINING_DATASETS_DIR),
            progress=reporter.rows_read,
        )
        services.training_run_attach_dataset(run_id=run.id, dataset=snapshot)
        run.dataset = snapshot
        reporter.log(f"dataset {snapshot.pk} ({snapshot.content_hash[:12]}): {snapshot.row_counts}")
    _check_enough_data(run, snapshot, config)
    assert run.base_version is not None  # pinned when the run was created
    return _Prepared(
        config=config,
        snapshot=snapshot,
        base=_model_dir(run.base_version),
        reward=_model_dir(run.reward_version) if run.reward_version else None,
        judge=_model_dir(run.judge_version) if run.judge_version else None,
    )


def _train(job: _Job, prepared: _Prepared) -> TrainResult:
    """Train in this process, or with ``TRAINING_PROCESSES`` > 1 in that many processes
    (``training.ml.launch``); either way the reporter gets the progress, the log and the say on
    stopping, and the staging folder receives the checkpoint."""
    # torch and TRL: imported only where a run trains
    from training.ml.distributed import clear_inherited_ranks, plan_processes
    from training.ml.launch import ProcessesFailed, train_in_processes
    from training.ml.trainers import train

    if inherited := clear_inherited_ranks():
        line = f"ignored {', '.join(inherited)} in the worker's environment: TRAINING_PROCESSES sets the processes"
        logger.warning("training run %s: %s", job.run.id, line)
        job.reporter.log(line)
    if job.staging.exists():
        shutil.rmtree(job.staging)
    job.staging.parent.mkdir(parents=True, exist_ok=True)
    job.reporter.phase("training", _DATASET_SHARE)
    processes, lines = plan_processes(job.run.kind, prepared.config.batch_size, settings.TRAINING_PROCESSES)
    for line in lines:
        job.reporter.log(line)
    arguments: dict[str, Any] = {
        "config": prepared.config,
        "data_dir": Path(prepared.snapshot.path) / DATASET_FOR_KIND[job.run.kind],
        "base_dir": prepared.base,
        "output_dir": job.staging,
        "hooks": job.reporter.hooks(),
        "reward_dir": prepared.reward,
    }
    if processes == 1:
        result = train(job.run.kind, **arguments)
    else:
        try:
            result = train_in_processes(job.run.kind, processes=processes, **arguments)
        except ProcessesFailed as exc:
            # The worker's log (and its alerting) gets what a one-process failure's traceback would give.
            logger.error("training run %s failed in its processes: %s", job.run.id, exc.message)
            raise RunFailure(exc.message, code="training_processes_failed") from exc
    if result.stopped or job.reporter.stop:
        raise RunCancelled
    job.reporter.log(f"trained {result.steps} steps")
    return result


def _check_usable(snapshot: DatasetSnapshot, *, when: str = "") -> None:
    try:
        services.dataset_check_usable(snapshot)
    except DatasetInvalidated as exc:
        raise RunFailure(f"{exc.message}{when}", code=exc.code) from None


def _publish(job: _Job, prepared: _Prepared, result: TrainResult) -> ModelVersion | None:
    reporter, snapshot = job.reporter, prepared.snapshot
    # A user whose rows it trained on may have been erased while it trained: then nothing it made is
    # evaluated or registered.
    _check_usable(snapshot, when=" (invalidated while the run trained; nothing was registered)")
    reporter.phase("evaluating", _DATASET_SHARE + _TRAIN_SHARE)
    evaluation = _evaluate(
        job.run, prepared.config, snapshot, job.staging, prepared.base, prepared.judge or prepared.reward
    )
    reporter.log(f"evaluation: {evaluation.get('eval')}")
    reporter.phase("registering", 0.99)
    if job.target.exists():  # left by a crash between the move and the registration: nothing points at it
        shutil.rmtree(job.target)
    job.staging.rename(job.target)
    metrics = {
        "train": result.metrics,
        **evaluation,
        "dataset": {"id": snapshot.pk, "content_hash": snapshot.content_hash, "rows": snapshot.row_counts},
    }
    return services.training_run_succeed(
        run_id=job.run.id,
        artifact_path=job.target,
        checksums=sha256_tree(job.target),
        metrics=metrics,
        log_tail=reporter.log_tail,
    )


@dataclass(frozen=True)
class _Outcome:
    status: str
    log: str  # a line for the run's log
    message: str = ""  # error_message, for people
    error: str = ""  # error, for engineers


def _outcome(exc: Exception) -> _Outcome:
    """The one map from what stopped a run to how the run ends."""
    if isinstance(exc, RunCancelled):
        return _Outcome(TrainingRun.Status.CANCELLED, "stopped: cancelled")
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = settings.TRAINING_SOFT_TIME_LIMIT_SECONDS
        return _Outcome(
            TrainingRun.Status.FAILED,
            f"stopped: soft time limit of {limit} s",
            f"The run took longer than its time limit ({limit} s, TRAINING_SOFT_TIME_LIMIT_SECONDS).",
            "SoftTimeLimitExceeded",
        )
    if isinstance(exc, RunFailure):
        return _Outcome(TrainingRun.Status.FAILED, f"failed: {exc.message}", exc.message, exc.code)
    return _Outcome(
        TrainingRun.Status.FAILED,
        f"failed: {type(exc).__name__}: {exc}",
        f"Training failed: {exc}" if str(exc) else f"Training failed ({type(exc).__name__}).",
        traceback.format_exc(),
    )


def _end(job: _Job, outcome: _Outcome) -> str:
    if outcome.status == TrainingRun.Status.FAILED and outcome.error.startswith("Traceback"):
        logger.error("training run %s failed\n%s", job.run.id, outcome.error)
    job.reporter.log(outcome.log)
    if outcome.status == TrainingRun.Status.CANCELLED:
        services.training_run_mark_cancelled(run_id=job.run.id, log_tail=job.reporter.log_tail)
    else:
        services.training_run_fail(
            run_id=job.run.id, message=outcome.message, error=outcome.error, log_tail=job.reporter.log_tail
        )
    return outcome.status
