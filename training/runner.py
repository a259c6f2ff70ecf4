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
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.utils import timezone

from models_registry.artifacts import resolve_artifact_path, sha256_tree, verify_checksums
from models_registry.exceptions import RegistryError
from models_registry.models import ModelVersion
from training import services
from training.exceptions import RunCancelled, RunFailure
from training.ml.config import DATASET_FOR_KIND, ConfigError, TrainConfig, validate_config
from training.ml.progress import Progress, RunHooks
from training.models import DatasetSnapshot, TrainingRun
from training.processor import ProcessorOptions, snapshot_build

logger = logging.getLogger(__name__)

# Share of the progress bar each phase fills.
_DATASET_SHARE = 0.05
_TRAIN_SHARE = 0.85


class Reporter:
    """Turns the ML layer's reports into heartbeats on the run row, keeps the log tail, and remembers
    whether the run should stop (cancelled by an operator, or no longer running)."""

    def __init__(self, run_id: int, *, heartbeat_seconds: float, log_lines: int):
        self.run_id = run_id
        self.heartbeat_seconds = heartbeat_seconds
        self.lines: deque[str] = deque(maxlen=log_lines)
        self.stop = False
        self.last_beat = 0.0
        self.metrics: dict[str, Any] = {}

    @property
    def log_tail(self) -> str:
        return "\n".join(self.lines)

    def log(self, line: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {line}")
        logger.info("training run %s: %s", self.run_id, line)

    def beat(self, **fields: Any) -> bool:
        """Heartbeat now; returns whether the run should go on."""
        self.last_beat = time.monotonic()
        if not services.training_run_heartbeat(run_id=self.run_id, log_tail=self.log_tail, **fields):
            self.stop = True
        return not self.stop

    def phase(self, name: str, progress: float) -> None:
        self.log(f"{name} ...")
        if not self.beat(phase=name, progress=progress):
            raise RunCancelled

    def rows_read(self, rows: int) -> None:
        if time.monotonic() - self.last_beat >= self.heartbeat_seconds and not self.beat():
            raise RunCancelled

    def report(self, progress: Progress) -> None:
        self.metrics = {key: value for key, value in progress.metrics.items() if isinstance(value, int | float)}
        self.beat(
            progress=_DATASET_SHARE + _TRAIN_SHARE * progress.fraction,
            step=progress.step,
            total_steps=progress.total_steps,
            metrics={"train": self.metrics},
        )

    def should_stop(self) -> bool:
        if not self.stop and time.monotonic() - self.last_beat >= self.heartbeat_seconds:
            self.beat()
        return self.stop

    def hooks(self) -> RunHooks:
        return RunHooks(
            report=self.report, should_stop=self.should_stop, log=self.log, heartbeat_seconds=self.heartbeat_seconds
        )


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
    from training.ml.evaluation import evaluate_policy, evaluate_reward

    root = Path(snapshot.path)
    if run.kind == TrainingRun.Kind.REWARD:
        pairs = root / "preference" / "test.jsonl"
        result: dict[str, Any] = {
            "eval": evaluate_reward(model_dir=output, pairs_path=pairs, max_length=config.max_length)
        }
        if run.base_version and run.base_version.kind == ModelVersion.Kind.REWARD:
            result["baseline"] = evaluate_reward(model_dir=base, pairs_path=pairs, max_length=config.max_length)
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


def execute(run_id: int, *, worker: str, task_id: str = "") -> str:
    """Run the training run ``run_id`` if this worker can claim it; returns its final status, or
    ``"skipped"`` when another delivery already took it (or it is gone or finished)."""
    if not services.training_run_claim(run_id=run_id, worker=worker, task_id=task_id):
        logger.info("training run %s: not claimed (already taken, finished or gone)", run_id)
        return "skipped"
    run = TrainingRun.objects.select_related("base_version", "reward_version").get(id=run_id)
    reporter = Reporter(
        run_id, heartbeat_seconds=settings.TRAINING_HEARTBEAT_SECONDS, log_lines=settings.TRAINING_LOG_TAIL_LINES
    )
    reporter.log(f"{run.kind} run claimed by {worker}")
    artifacts = Path(settings.TRAINING_ARTIFACTS_DIR) / run.output_kind
    staging = artifacts / f".run-{run.id}-staging"
    target = artifacts / f"run-{run.id}"
    registered = False
    try:
        try:
            config = validate_config(run.kind, run.config)
        except ConfigError as exc:
            raise RunFailure(f"The stored config is invalid: {exc}", code="invalid_config") from exc
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
        base = _model_dir(run.base_version)
        reward = _model_dir(run.reward_version) if run.reward_version else None
        if staging.exists():
            shutil.rmtree(staging)
        staging.parent.mkdir(parents=True, exist_ok=True)
        reporter.phase("training", _DATASET_SHARE)
        from training.ml.trainers import train

        result = train(
            run.kind,
            config=config,
            data_dir=Path(snapshot.path) / DATASET_FOR_KIND[run.kind],
            base_dir=base,
            output_dir=staging,
            hooks=reporter.hooks(),
            reward_dir=reward,
        )
        if result.stopped or reporter.stop:
            raise RunCancelled
        reporter.log(f"trained {result.steps} steps")
        reporter.phase("evaluating", _DATASET_SHARE + _TRAIN_SHARE)
        evaluation = _evaluate(run, config, snapshot, staging, base, reward)
        reporter.log(f"evaluation: {evaluation.get('eval')}")
        reporter.phase("registering", 0.99)
        if target.exists():  # left by a crash between the move and the registration: nothing points at it
            shutil.rmtree(target)
        staging.rename(target)
        metrics = {
            "train": result.metrics,
            **evaluation,
            "dataset": {"id": snapshot.pk, "content_hash": snapshot.content_hash, "rows": snapshot.row_counts},
        }
        version = services.training_run_succeed(
            run_id=run.id,
            artifact_path=target,
            checksums=sha256_tree(target),
            metrics=metrics,
            log_tail=reporter.log_tail,
        )
        if version is None:  # cancelled or reaped meanwhile; the finally below removes the checkpoint
            return TrainingRun.objects.values_list("status", flat=True).get(id=run.id)
        registered = True
        logger.info("training run %s registered %s", run.id, version.label)
        return TrainingRun.Status.SUCCEEDED
    except RunCancelled:
        reporter.log("stopped: cancelled")
        services.training_run_mark_cancelled(run_id=run.id, log_tail=reporter.log_tail)
        return TrainingRun.Status.CANCELLED
    except SoftTimeLimitExceeded:
        limit = settings.TRAINING_SOFT_TIME_LIMIT_SECONDS
        reporter.log(f"stopped: soft time limit of {limit} s")
        services.training_run_fail(
            run_id=run.id,
            message=f"The run took longer than its time limit ({limit} s, TRAINING_SOFT_TIME_LIMIT_SECONDS).",
            error="SoftTimeLimitExceeded",
            log_tail=reporter.log_tail,
        )
        return TrainingRun.Status.FAILED
    except RunFailure as exc:
        reporter.log(f"failed: {exc.message}")
        services.training_run_fail(run_id=run.id, message=exc.message, error=exc.code, log_tail=reporter.log_tail)
        return TrainingRun.Status.FAILED
    except Exception as exc:
        logger.exception("training run %s failed", run.id)
        reporter.log(f"failed: {type(exc).__name__}: {exc}")
        services.training_run_fail(
            run_id=run.id,
            message=f"Training failed: {exc}" if str(exc) else f"Training failed ({type(exc).__name__}).",
            error=traceback.format_exc(),
            log_tail=reporter.log_tail,
        )
        return TrainingRun.Status.FAILED
    finally:
        # A checkpoint no version points at is removed, so nothing half-registered is left behind.
        shutil.rmtree(staging, ignore_errors=True)
        if not registered:
            shutil.rmtree(target, ignore_errors=True)
