"""Writes to training runs: create (and send the task on commit), claim, heartbeat, cancel, finish,
fail, reap. Every status change goes through ``_transition``: a conditional UPDATE that only matches
a run whose status may move to the new one (``TrainingRun.TRANSITIONS``), so a redelivered task, a
late heartbeat from a reaped worker or a cancel racing the end of a run changes nothing it should not.

Training itself never runs inside a transaction: ``training.runner`` calls these small writes
around it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnreachable

from core.dbclock import db_ago
from models_registry.models import ModelVersion
from models_registry.selectors import live_version
from models_registry.services import model_version_register
from training.exceptions import DatasetInvalidated, RunConflict, RunNotFound, TrainingError
from training.ml.config import ConfigError, validate_config
from training.models import DatasetSnapshot, TrainingRun

logger = logging.getLogger(__name__)

Status = TrainingRun.Status
_ERROR_LIMIT = 20_000


# Sent by name: ``training.tasks`` is the leaf that imports this module and the runner, so nothing
# here imports it (CELERY_TASK_ROUTES sends it to the ``training`` queue by this name).
EXECUTE_TASK = "training.tasks.training_run_execute"


# A queued run with no task id this old was never handed to the broker: it is sent again.
UNSENT_AFTER = timedelta(seconds=30)
CYCLE_ADVANCE_TASK = "training.tasks.cycle_advance"  # by name, as EXECUTE_TASK


def cycle_advance_send(cycle_id: int) -> None:
    """Ask a worker to advance the cycle now (a cycle starts, a stage's run ends). A send that fails
    (the broker unreachable) is logged and nothing more: the sweep (beat, every CYCLE_SWEEP_SECONDS)
    advances every active cycle anyway, so the caller (a request, a worker) goes on."""
    try:
        current_app.send_task(CYCLE_ADVANCE_TASK, args=[cycle_id])
    except BrokerUnreachable:
        logger.warning("cycle %s: the broker is unreachable; the sweep advances it later", cycle_id)
    except Exception:
        logger.warning("cycle %s: could not ask a worker to advance it; the sweep will", cycle_id, exc_info=True)


def _send_execute(run_id: int) -> bool:
    """Hand a queued run to the broker; its task id is stored. With the broker unreachable the run
    stays queued, a warning is logged, and ``training_runs_resend`` (beat) sends it once the broker is
    back: the request that started it still succeeds (it runs after the commit), and nothing is lost.
    Sent twice, a run is trained once (the claim refuses a run that is no longer queued)."""
    try:
        result = current_app.send_task(
            EXECUTE_TASK,
            args=[run_id],
            soft_time_limit=settings.TRAINING_SOFT_TIME_LIMIT_SECONDS,
            time_limit=settings.TRAINING_TIME_LIMIT_SECONDS,
        )
    except BrokerUnreachable:
        logger.warning("training run %s: the broker is unreachable; it stays queued and is sent again later", run_id)
        return False
    TrainingRun.objects.filter(id=run_id, task_id="").update(task_id=result.id or "")
    return True


def training_runs_resend(*, unsent_after: timedelta = UNSENT_AFTER) -> list[int]:
    """Send the runs queued more than ``unsent_after`` ago that the broker never got (no task id: it
    was unreachable when they were started). A run of a cycle trained by its own process
    (``trained_by``) is never sent: that process trains it. Returns the ids sent."""
    cutoff = timezone.now() - unsent_after
    unsent = TrainingRun.objects.filter(status=Status.QUEUED, task_id="", created_at__lt=cutoff).filter(
        Q(cycle_as_reward__isnull=True) | Q(cycle_as_reward__trained_by=""),
        Q(cycle_as_policy__isnull=True) | Q(cycle_as_policy__trained_by=""),
    )
    return [run_id for run_id in unsent.order_by("created_at").values_list("id", flat=True) if _send_execute(run_id)]


def base_versions_for(kind: str, *, reward_override: bool = False) -> tuple[ModelVersion, ModelVersion | None]:
    """(what the run starts from, the live reward model). Reward runs continue the live reward
    model, or start from the live policy's body when there is none; policy runs start from the live
    policy and are judged by the live reward model (PPO cannot run without a reward model: the live
    one, unless ``reward_override``)."""
    policy = live_version(ModelVersion.Kind.POLICY)
    reward = live_version(ModelVersion.Kind.REWARD)
    if kind == TrainingRun.Kind.REWARD:
        base = reward or policy
        if base is None:
            raise TrainingError(
                "No live reward model or policy to start from; run `manage.py bootstrap_models` first.",
                code="no_live_model",
            )
        return base, None
    if policy is None:
        raise TrainingError(
            "No live policy to start from; run `manage.py bootstrap_models` first.", code="no_live_model"
        )
    if kind == TrainingRun.Kind.PPO and reward is None and not reward_override:
        raise TrainingError("PPO needs a live reward model; train and deploy one first.", code="no_live_reward")
    for version in (policy, reward):
        if version is not None and version.backend != ModelVersion.Backend.LOCAL:
            raise TrainingError(
                f"{version.label} is served by an OpenAI-compatible server; training needs its weights in a local"
                " folder. Register a local checkpoint of it first.",
                code="not_local",
            )
    return policy, reward


@transaction.atomic
def training_run_create(
    *,
    kind: str,
    config: Any = None,
    requested_by: User | AnonymousUser | None = None,
    dataset: DatasetSnapshot | None = None,
    reward_version: ModelVersion | None = None,
    judge_version: ModelVersion | None = None,
    dispatch: bool = True,
) -> TrainingRun:
    """Validate ``config`` for ``kind``, pin the versions the run starts from, store the run, and send
    its task to the ``training`` queue once the transaction commits.

    ``dataset``: train on this snapshot instead of building a new one (a cycle's policy run uses its
    reward run's). ``reward_version``: the reward model that scores a PPO run's rollouts instead of
    the live one (a cycle's new reward model). ``judge_version``: the reward model that judges the
    policy it makes instead of the live one (a cycle's, when the live one no longer agrees with users).
    ``dispatch`` False: no task is sent; the process that made it trains it (``runner.execute``).
    Refused for an invalidated ``dataset`` (``DatasetInvalidated``)."""
    if dataset is not None:
        dataset_check_usable(dataset)
    try:
        validated = validate_config(kind, config)
    except ConfigError as exc:
        raise TrainingError(str(exc), code="invalid_config", fields=exc.fields) from exc
    base, live_reward = base_versions_for(kind, reward_override=reward_version is not None)
    run = TrainingRun.objects.create(
        kind=kind,
        config=validated.__dict__.copy(),
        phase="queued",
        base_version=base,
        reward_version=reward_version or live_reward if kind != TrainingRun.Kind.REWARD else None,
        judge_version=judge_version or live_reward if kind != TrainingRun.Kind.REWARD else None,
        dataset=dataset,
        requested_by=requested_by if isinstance(requested_by, User) else None,
    )
    if dispatch:
        transaction.on_commit(lambda: _send_execute(run.id))
    return run


def dataset_check_usable(dataset: DatasetSnapshot) -> None:
    """Raise ``DatasetInvalidated`` if the snapshot was invalidated (read from the database, not the
    instance: an erasure may have happened since it was loaded)."""
    found = DatasetSnapshot.objects.filter(pk=dataset.pk).values_list("invalidated_at", "invalidated_reason").first()
    if found is None or found[0] is not None:
        reason = found[1] if found else "it no longer exists."
        raise DatasetInvalidated(f"Dataset snapshot {dataset.pk} cannot be trained on: {reason}")


def _transition(run_id: int, to: str, *, only_if: dict[str, Any] | None = None, **fields: Any) -> bool:
    """Move run ``run_id`` to status ``to`` (and write ``fields``) if, and only if, its status may go
    there along ``TrainingRun.TRANSITIONS`` and it matches ``only_if``. One conditional UPDATE: False
    (and nothing written) when the run is gone or its status does not allow it. The one place that
    writes a run's status. ``heartbeat_at`` is always the database's time (``core.dbclock``)."""
    allowed_from = [status for status, targets in TrainingRun.TRANSITIONS.items() if to in targets]
    if not allowed_from:
        raise ValueError(f"No status may move to {to!r}.")
    now = timezone.now()
    if to not in TrainingRun.TRANSITIONS:  # a final status
        fields = {"finished_at": now, "heartbeat_at": Now(), **fields}
    runs = TrainingRun.objects.filter(id=run_id, status__in=allowed_from, **(only_if or {}))
    return runs.update(status=to, **fields) == 1


def training_run_claim(*, run_id: int, worker: str, task_id: str = "") -> bool:
    """Take a queued run for this worker. False when the run is gone, already claimed, or finished:
    a redelivered task then does nothing."""
    now = timezone.now()
    return _transition(
        run_id,
        Status.RUNNING,
        only_if={"cancel_requested": False},
        started_at=now,
        heartbeat_at=Now(),
        worker=worker[:200],
        phase="starting",
        **({"task_id": task_id} if task_id else {}),
    )


def training_run_heartbeat(
    *,
    run_id: int,
    phase: str | None = None,
    progress: float | None = None,
    step: int | None = None,
    total_steps: int | None = None,
    metrics: dict[str, Any] | None = None,
    log_tail: str | None = None,
) -> bool:
    """Record that the worker is alive and how far it got. Returns False when the run is no longer
    running or an operator asked to cancel it: the worker should stop."""
    fields: dict[str, Any] = {"heartbeat_at": Now()}  # the database's clock, as the reaper's
    if phase is not None:
        fields["phase"] = phase[:32]
    if progress is not None:
        fields["progress"] = min(1.0, max(0.0, progress))
    if step is not None:
        fields["step"] = max(0, step)
    if total_steps is not None:
        fields["total_steps"] = max(0, total_steps)
    if metrics is not None:
        fields["metrics"] = metrics
    if log_tail is not None:
        fields["log_tail"] = log_tail
    updated = TrainingRun.objects.filter(id=run_id, status=Status.RUNNING, cancel_requested=False).update(**fields)
    return updated == 1


def training_run_cancel(*, run_id: int) -> TrainingRun:
    """Cancel a queued run at once; ask a running one to stop (its worker stops at the next step and
    records ``cancelled``). A finished run cannot be cancelled."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().filter(id=run_id).first()
        if run is None:
            raise RunNotFound(f"Training run {run_id} does not exist.")
        if run.status == Status.QUEUED:
            _transition(
                run_id,
                Status.CANCELLED,
                cancel_requested=True,
                phase="cancelled",
                error_message="Cancelled before it started.",
            )
        elif run.status == Status.RUNNING:
            if not run.cancel_requested:
                TrainingRun.objects.filter(id=run_id).update(cancel_requested=True)
        else:
            raise RunConflict(f"Training run {run_id} already {run.status}; there is nothing to cancel.")
        run.refresh_from_db()
    return run


def training_run_fail(*, run_id: int, message: str, error: str = "", log_tail: str | None = None) -> bool:
    fields: dict[str, Any] = {"error_message": message[:_ERROR_LIMIT], "error": error[:_ERROR_LIMIT], "phase": "failed"}
    if log_tail is not None:
        fields["log_tail"] = log_tail
    return _transition(run_id, Status.FAILED, **fields)


def training_run_mark_cancelled(*, run_id: int, log_tail: str | None = None) -> bool:
    fields: dict[str, Any] = {"error_message": "Cancelled by an operator.", "phase": "cancelled"}
    if log_tail is not None:
        fields["log_tail"] = log_tail
    return _transition(run_id, Status.CANCELLED, **fields)


def training_run_attach_dataset(*, run_id: int, dataset: DatasetSnapshot) -> None:
    TrainingRun.objects.filter(id=run_id).update(dataset=dataset)


def training_run_succeed(
    *, run_id: int, artifact_path: Path, checksums: dict[str, str], metrics: dict[str, Any], log_tail: str
) -> ModelVersion | None:
    """Register the run's output as a candidate version and mark the run succeeded, in one
    transaction. None (and nothing registered) when the run was cancelled or reaped meanwhile: the
    caller then removes the artifact."""
    with transaction.atomic():
        run = (
            TrainingRun.objects.select_for_update(of=("self",))
            .select_related("base_version", "reward_version", "dataset", "requested_by")
            .get(id=run_id)
        )
        if run.status != Status.RUNNING:
            return None
        if run.cancel_requested:
            training_run_mark_cancelled(run_id=run.id, log_tail=log_tail)
            return None
        lineage = {
            "training_run": run.id,
            "kind": run.kind,
            "dataset": run.dataset_id,
            "dataset_hash": run.dataset.content_hash if run.dataset else None,
            "feedback_ids": run.dataset.source.get("feedback_ids") if run.dataset else None,
            "base_version": run.base_version.label if run.base_version else None,
            "reward_version": run.reward_version.label if run.reward_version_id and run.reward_version else None,
            "config": run.config,
        }
        version = model_version_register(
            kind=run.output_kind,
            artifact_path=str(artifact_path),
            checksums=checksums,
            metrics={**metrics, "lineage": lineage},
            parent=run.base_version if run.base_version and run.base_version.kind == run.output_kind else None,
            reason=f"trained by {run.kind} run {run.id}"
            + (f", requested by {run.requested_by.get_username()}" if run.requested_by else ""),
            requested_by=run.requested_by,
        )
        _transition(
            run.id,
            Status.SUCCEEDED,
            phase="done",
            progress=1.0,
            output_version=version,
            metrics=metrics,
            log_tail=log_tail,
        )
    return version


def training_runs_reap(*, stale_after: timedelta | None = None) -> list[int]:
    """Fail running runs whose heartbeat is older than ``stale_after`` (TRAINING_STALE_AFTER_SECONDS):
    their worker died or was killed at the hard time limit. Returns the ids failed. The heartbeat is
    stamped and its age measured with the database's clock, so a reaper (a beat worker) whose clock runs
    ahead of the training worker's does not fail a live run."""
    stale_after = stale_after or timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS)
    cutoff = db_ago(stale_after)
    reaped = []
    for run_id, worker in TrainingRun.objects.filter(status=Status.RUNNING, heartbeat_at__lt=cutoff).values_list(
        "id", "worker"
    ):
        seconds = int(stale_after.total_seconds())
        # Only if still stale: a heartbeat that arrived since the read keeps the run alive.
        if _transition(
            run_id,
            Status.FAILED,
            only_if={"heartbeat_at__lt": cutoff},
            phase="failed",
            error="reaped: stale heartbeat",
            error_message=(
                f"The worker ({worker or 'unknown'}) stopped reporting for more than {seconds} s; it probably died"
                " or hit the hard time limit. Start the run again."
            ),
        ):
            logger.warning("Reaped training run %s (worker %s): no heartbeat for %s s", run_id, worker, seconds)
            reaped.append(run_id)
    return reaped
