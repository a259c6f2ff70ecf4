"""The small steps every stage of a cycle takes (``training.cycle.service``): lock it, start a run,
move to the next stage, end it; and the reads of which cycle is active and what came since the last."""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import Q
from django.utils import timezone

from feedback.models import Feedback
from models_registry.models import ModelVersion
from models_registry.services import model_version_reject
from training import services
from training.exceptions import RunNotFound
from training.models import Cycle, TrainingRun

logger = logging.getLogger(__name__)

Status, Stage = Cycle.Status, Cycle.Stage


# --- Steps --------------------------------------------------------------------------------------


def _locked(cycle_id: int) -> Cycle:
    cycle = (
        Cycle.objects.select_for_update(of=("self",))
        .select_related("reward_run", "policy_run", "candidate", "canary")
        .filter(pk=cycle_id)
        .first()
    )
    if cycle is None:
        raise RunNotFound(f"Cycle {cycle_id} does not exist.")
    return cycle


def _judge_label(cycle: Cycle, run: TrainingRun) -> str:
    judge = run.judge_version
    if judge is None:
        return "no reward model"
    new = cycle.reward_run.output_version_id if cycle.reward_run else None
    if judge.pk != new:
        return f"the live reward model {judge.label}"
    trained = ", which also trained it" if run.reward_version_id == judge.pk else ""
    return f"the cycle's reward model {judge.label}{trained}"


def _start_run(
    cycle: Cycle,
    part: str,
    *,
    reward_version: ModelVersion | None,
    dataset: Any,
    judge_version: ModelVersion | None = None,
) -> TrainingRun:
    kind = "reward" if part == "reward" else cycle.policy_kind
    return services.training_run_create(
        kind=kind,
        config=cycle.config[part],
        requested_by=cycle.requested_by,
        dataset=dataset,
        reward_version=reward_version,
        judge_version=judge_version,
        dispatch=not cycle.trained_by,
    )


def _stage(name: str, at: Any) -> dict[str, Any]:
    return {"name": name, "status": "running", "started_at": at.isoformat(), "finished_at": None, "detail": ""}


def _next(cycle: Cycle, stage: str, detail: str) -> None:
    now = timezone.now()
    stages = list(cycle.stages)
    if stages and stages[-1]["status"] == "running":
        stages[-1] = {**stages[-1], "status": "done", "finished_at": now.isoformat(), "detail": detail}
    if stage != Stage.DONE:
        stages.append(_stage(stage, now))
    cycle.stages = stages
    cycle.stage = stage
    cycle.save()


def _end(cycle: Cycle, status: str, reason: str, *, stage_detail: str = "") -> None:
    now = timezone.now()
    stages = list(cycle.stages)
    if stages and stages[-1]["status"] == "running":
        ended = "failed" if status in (Status.FAILED, Status.NOT_DEPLOYED) else "ended"
        if status == Status.CANCELLED:
            ended = "cancelled"
        stages[-1] = {**stages[-1], "status": ended, "finished_at": now.isoformat(), "detail": stage_detail or reason}
    cycle.stages = stages
    cycle.status = status
    cycle.reason = reason
    cycle.finished_at = now
    cycle.save()
    logger.info("cycle %s ended %s: %s", cycle.pk, status, reason)


def _reject_candidates(cycle: Cycle, reason: str) -> None:
    """Versions the cycle made and did not deploy are rejected, so no one deploys them by mistake."""
    for run in (cycle.reward_run, cycle.policy_run):
        version = run.output_version if run is not None else None
        if version is not None and version.status in (ModelVersion.Status.CANDIDATE, ModelVersion.Status.APPROVED):
            model_version_reject(version_id=version.pk, actor=None, reason=reason[:2000])


def active_cycle() -> Cycle | None:
    return Cycle.objects.filter(status__in=Cycle.ACTIVE).first()


def _previous_cycle() -> Cycle | None:
    """The cycle whose feedback a new one must not count again: the newest that got past the feedback
    stage and was not cancelled or failed (those learnt nothing from it that went anywhere)."""
    tried = Cycle.objects.exclude(stage=Stage.FEEDBACK).exclude(status__in=[Status.CANCELLED, Status.FAILED])
    return tried.order_by("-created_at").first()


def new_ratings_since_last_cycle() -> int:
    previous = _previous_cycle()
    ratings = Feedback.objects.filter(Q(thumbs__isnull=False) | Q(rating__isnull=False))
    if previous is not None:
        ratings = ratings.filter(created_at__gte=previous.created_at)
    return ratings.count()
