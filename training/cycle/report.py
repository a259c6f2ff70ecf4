"""A cycle's progress and report, JSON-ready (the API, ``rlhf_cycle``, the admin)."""

from __future__ import annotations

from typing import Any

from training.models import Cycle, TrainingRun

Stage = Cycle.Stage


# Share of the progress bar: the two runs fill most of it.
_PROGRESS = {Stage.FEEDBACK: 0.0, Stage.REWARD: 0.02, Stage.POLICY: 0.45, Stage.GATES: 0.95, Stage.APPROVAL: 0.96}


def cycle_progress(cycle: Cycle) -> float:
    """0 to 1: where the cycle is in its training stages (1 from the canary on, and once ended)."""
    if not cycle.is_active or cycle.stage in (Stage.CANARY, Stage.DONE):
        return 1.0
    start = _PROGRESS.get(Stage(cycle.stage), 0.0)
    if cycle.stage == Stage.REWARD and cycle.reward_run is not None:
        return start + 0.43 * cycle.reward_run.progress
    if cycle.stage == Stage.POLICY and cycle.policy_run is not None:
        return start + 0.5 * cycle.policy_run.progress
    return start


def cycle_report(cycle: Cycle) -> dict[str, Any]:
    """Everything a person or a CI job wants to know about a cycle, JSON-ready."""

    def run(run: TrainingRun | None) -> dict[str, Any] | None:
        if run is None:
            return None
        return {
            "id": run.pk,
            "kind": run.kind,
            "status": run.status,
            "progress": run.progress,
            "error_message": run.error_message,
            "dataset": run.dataset_id,
            "output_version": run.output_version.label if run.output_version else None,
            "eval": run.metrics.get("eval"),
            "baseline": run.metrics.get("baseline"),
        }

    return {
        "id": cycle.pk,
        "policy_kind": cycle.policy_kind,
        "trigger": cycle.trigger,
        "status": cycle.status,
        "stage": cycle.stage,
        "progress": round(cycle_progress(cycle), 4),
        "stages": cycle.stages,
        "gates": cycle.gates,
        "new_ratings": cycle.new_ratings,
        "reward_run": run(cycle.reward_run),
        "policy_run": run(cycle.policy_run),
        "candidate": cycle.candidate.label if cycle.candidate else None,
        "canary": (
            {"share": cycle.canary.share, "outcome": cycle.canary.outcome, "version": cycle.canary.version.label}
            if cycle.canary
            else None
        ),
        "reason": cycle.reason,
        "config": cycle.config,
        "requested_by": cycle.requested_by.get_username() if cycle.requested_by else None,
        "created_at": cycle.created_at,
        "finished_at": cycle.finished_at,
    }
