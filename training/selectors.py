"""Reads of training runs and dataset snapshots."""

from __future__ import annotations

from django.db.models import QuerySet

from training.exceptions import RunNotFound
from training.models import TrainingRun


def training_run_list(*, kind: str | None = None, status: str | None = None) -> QuerySet[TrainingRun]:
    runs = TrainingRun.objects.select_related(
        "dataset", "base_version", "reward_version", "output_version", "requested_by"
    )
    if kind:
        runs = runs.filter(kind=kind)
    if status:
        runs = runs.filter(status=status)
    return runs.order_by("-created_at", "-id")


def training_run_get(*, run_id: int) -> TrainingRun:
    run = training_run_list().filter(id=run_id).first()
    if run is None:
        raise RunNotFound(f"Training run {run_id} does not exist.")
    return run
