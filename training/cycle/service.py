"""Create a cycle, move it from stage to stage, cancel it.

``cycle_advance`` is idempotent and cheap: it looks at where the cycle is and does the next step when
it can (start a run, read a finished run's evaluation and apply the gates, approve, start the
canary, read the canary's outcome), under a lock on the cycle row and never around slow work (the
runs train in workers). It is called when a stage's run ends, by the beat sweep, and by
``rlhf_cycle``.

Stages and what ends a cycle:
1. ``feedback``: enough ratings since the previous cycle (gate ``new_feedback``), else not deployed.
2. ``reward``: a reward run (it builds the dataset snapshot the whole cycle uses, with a held-out split
   sized for judging); its evaluation is gated (accuracy, against the live reward model, calibration).
3. ``policy``: a PPO run scored by the new reward model (or DPO / KTO on the same snapshot), evaluated
   against the live policy by the live reward model; gated (win rate, KL, length).
4. ``gates``: a failed gate ends the cycle "not deployed, because ..." and rejects its candidates.
5. ``approval``: with ``CYCLE_AUTO_APPROVE`` and every gate passed, the system approves; otherwise a
   person approves the policy candidate in the admin or the API (four-eyes applies), and the cycle
   goes on from there. The reward candidate goes live when the policy candidate is approved.
6. ``canary``: the candidate serves ``CYCLE_CANARY_SHARE`` of new conversations; the monitor promotes
   or stops it, and the cycle ends promoted or stopped.
A failed or cancelled run ends the cycle failed or cancelled with the run's reason. A snapshot
invalidated by a user erasure (``training.erasure``) after the reward run trained on it ends the cycle
failed, its candidates rejected; the next cycle builds a fresh snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from core.stats import proportion
from feedback.models import Feedback
from models_registry.exceptions import RegistryError
from models_registry.models import Canary, ModelVersion
from models_registry.services import (
    canary_start,
    canary_stop,
    model_version_approve,
    model_version_make_live,
)
from training import services
from training.cycle import gates as gate_rules
from training.cycle.report import cycle_progress as cycle_progress  # re-exported: callers use service
from training.cycle.report import cycle_report as cycle_report
from training.cycle.steps import (
    _end,
    _judge_label,
    _locked,
    _next,
    _previous_cycle,
    _reject_candidates,
    _stage,
    _start_run,
    active_cycle,
    new_ratings_since_last_cycle,
)
from training.exceptions import RunConflict, TrainingError
from training.ml.config import ConfigError, validate_config
from training.models import Cycle, DatasetSnapshot, TrainingRun

logger = logging.getLogger(__name__)

Status, Stage = Cycle.Status, Cycle.Stage
RunStatus = TrainingRun.Status


def thresholds() -> gate_rules.Thresholds:
    return gate_rules.Thresholds(
        min_new_ratings=settings.CYCLE_MIN_NEW_RATINGS,
        min_reward_accuracy=settings.CYCLE_MIN_REWARD_ACCURACY,
        min_heldout_pairs=settings.CYCLE_MIN_HELDOUT_PAIRS,
        max_reward_ece=settings.CYCLE_MAX_REWARD_ECE,
        min_win_rate=settings.CYCLE_MIN_WIN_RATE,
        min_eval_prompts=settings.CYCLE_MIN_EVAL_PROMPTS,
        max_kl=settings.CYCLE_MAX_KL,
        min_length_ratio=settings.CYCLE_MIN_LENGTH_RATIO,
        max_length_ratio=settings.CYCLE_MAX_LENGTH_RATIO,
    )


# --- Create and cancel -----------------------------------------------------------------------------


def _configs(policy_kind: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The two runs' configs: the cycle defaults (settings), then the caller's ``reward`` and
    ``policy`` overrides, each validated for its kind."""
    unknown = sorted(set(overrides) - {"reward", "policy"})
    if unknown:
        raise TrainingError(
            "A cycle's config has two parts, 'reward' and 'policy'.",
            code="invalid_config",
            fields={name: ["Unknown part; use 'reward' or 'policy'."] for name in unknown},
        )
    configs = {}
    for part, kind in (("reward", "reward"), ("policy", policy_kind)):
        given = overrides.get(part) or {}
        if not isinstance(given, dict):
            raise TrainingError(
                f"config.{part} must be an object.", code="invalid_config", fields={part: ["Not an object."]}
            )
        merged = {**settings.CYCLE_RUN_DEFAULTS.get(part, {}), **given}
        try:
            configs[part] = validate_config(kind, merged).__dict__.copy()
        except ConfigError as exc:
            fields = {f"{part}.{name}": messages for name, messages in exc.fields.items()}
            raise TrainingError(f"config.{part}: {exc}", code="invalid_config", fields=fields) from exc
    # The policy trains on the reward run's snapshot: one split for both.
    configs["policy"]["test_fraction"] = configs["reward"]["test_fraction"]
    return configs


def cycle_create(
    *,
    policy_kind: str = "ppo",
    trigger: str = Cycle.Trigger.MANUAL,
    requested_by: User | AnonymousUser | None = None,
    config: dict[str, Any] | None = None,
    trained_by: str = "",
) -> Cycle:
    """Start a cycle (it advances on a worker once this commits). At most one is active at a time.
    ``trained_by``: the process that will train its runs (``cycle_run_here``); no run of it is ever
    sent to the training workers."""
    if policy_kind not in Cycle.POLICY_KINDS:
        raise TrainingError(
            f"Unknown policy kind {policy_kind!r}; choose one of {', '.join(Cycle.POLICY_KINDS)}.",
            code="invalid_config",
            fields={"policy": [f"One of {', '.join(Cycle.POLICY_KINDS)}."]},
        )
    configs = _configs(policy_kind, config or {})
    previous = _previous_cycle()
    now = timezone.now()
    try:
        with transaction.atomic():
            cycle = Cycle.objects.create(
                policy_kind=policy_kind,
                trigger=trigger,
                config=configs,
                requested_by=requested_by if isinstance(requested_by, User) else None,
                feedback_from=previous.created_at if previous else None,
                stages=[_stage(Stage.FEEDBACK, now)],
                trained_by=trained_by[:200],
            )
            if not trained_by:
                transaction.on_commit(lambda: services.cycle_advance_send(cycle.pk))
    except IntegrityError:
        active = active_cycle()
        state = f"{active} is still {active.get_status_display().lower()}" if active else "A cycle is active"
        raise RunConflict(f"{state}; one cycle runs at a time. Cancel it or wait for it to end.") from None
    logger.info("cycle %s started (%s, by %s)", cycle.pk, policy_kind, trigger)
    return cycle


def cycle_cancel(*, cycle_id: int, reason: str = "cancelled by an operator") -> Cycle:
    """End an active cycle: its running stage is cancelled (a run stops at its next step, a canary
    stops) and nothing it made is deployed."""
    with transaction.atomic():
        cycle = _locked(cycle_id)
        if not cycle.is_active:
            raise RunConflict(f"Cycle {cycle_id} already {cycle.get_status_display().lower()}; nothing to cancel.")
        for run in (cycle.reward_run, cycle.policy_run):
            if run is not None and run.is_active:
                services.training_run_cancel(run_id=run.pk)
        if cycle.canary_id and Canary.objects.filter(pk=cycle.canary_id, outcome=Canary.Outcome.RUNNING).exists():
            canary_stop(kind=ModelVersion.Kind.POLICY, actor=None, reason=f"cycle {cycle.pk} cancelled")
        _reject_candidates(cycle, f"cycle {cycle.pk} cancelled: {reason}")
        _end(cycle, Status.CANCELLED, reason)
    return cycle


# --- Advance --------------------------------------------------------------------------------------


def cycle_advance(cycle_id: int) -> Cycle:
    """Do every step the cycle can take now; returns it as it is left (waiting or ended)."""
    while True:
        with transaction.atomic():
            cycle = _locked(cycle_id)
            if not cycle.is_active:
                return cycle
            step = {
                Stage.FEEDBACK: _check_feedback,
                Stage.REWARD: _after_reward,
                Stage.POLICY: _after_policy,
                Stage.APPROVAL: _after_approval,
                Stage.CANARY: _after_canary,
            }.get(Stage(cycle.stage))
            moved = step(cycle) if step else False
        if not moved:
            return cycle


def _check_feedback(cycle: Cycle) -> bool:
    ratings = Feedback.objects.filter(Q(thumbs__isnull=False) | Q(rating__isnull=False))
    if cycle.feedback_from is not None:
        ratings = ratings.filter(created_at__gte=cycle.feedback_from)
    cycle.new_ratings = ratings.count()
    gate = gate_rules.new_feedback(cycle.new_ratings, thresholds())
    cycle.gates = [gate.as_dict()]
    if not gate.passed:
        _end(cycle, Status.NOT_DEPLOYED, gate_rules.failed_summary([gate]), stage_detail=gate.detail)
        return False
    run = _start_run(cycle, "reward", reward_version=None, dataset=None)
    cycle.reward_run = run
    _next(cycle, Stage.REWARD, f"{gate.detail}; reward run {run.pk} queued")
    return True


def _run_outcome(cycle: Cycle, run: TrainingRun) -> bool | None:
    """None while the run goes on; False (cycle ended) if it failed or was cancelled; True if it succeeded."""
    run.refresh_from_db()
    if run.is_active:
        return None
    if run.status == RunStatus.SUCCEEDED:
        return True
    status = Status.CANCELLED if run.status == RunStatus.CANCELLED else Status.FAILED
    _end(cycle, status, f"{run} {run.status}: {run.error_message or 'no reason recorded'}")
    return False


def _after_reward(cycle: Cycle) -> bool:
    assert cycle.reward_run is not None
    outcome = _run_outcome(cycle, cycle.reward_run)
    if not outcome:
        return False
    run = cycle.reward_run
    if (
        run.dataset_id is not None
        and DatasetSnapshot.objects.filter(pk=run.dataset_id, invalidated_at__isnull=False).exists()
    ):
        # An erasure invalidated the snapshot after the reward model trained on it: the reward model
        # holds the erased rows and the policy cannot train on the snapshot. The next cycle builds a
        # fresh one.
        reason = (
            f"dataset snapshot {run.dataset_id} was invalidated by a user erasure after {run} trained on it; the"
            " cycle ends and its candidates are rejected. Start a new cycle: it builds a fresh snapshot."
        )
        _end(cycle, Status.FAILED, reason, stage_detail="dataset invalidated")
        _reject_candidates(cycle, reason)
        return False
    gates = gate_rules.reward_gates(run.metrics.get("eval") or {}, run.metrics.get("baseline"), thresholds())
    cycle.gates = [*cycle.gates, *(gate.as_dict() for gate in gates)]
    if not all(gate.passed for gate in gates):
        _end(cycle, Status.NOT_DEPLOYED, gate_rules.failed_summary(gates), stage_detail="reward gates failed")
        _reject_candidates(cycle, gate_rules.failed_summary(gates))
        return False
    judge, why = _judge(cycle, run)
    policy = _start_run(
        cycle,
        "policy",
        reward_version=run.output_version if cycle.policy_kind == "ppo" else None,
        judge_version=judge,
        dataset=run.dataset,
    )
    cycle.policy_run = policy
    label = run.output_version.label if run.output_version else "-"
    _next(cycle, Stage.POLICY, f"{label} passed its gates; {policy} queued; {why}")
    return True


def _judge(cycle: Cycle, reward_run: TrainingRun) -> tuple[ModelVersion | None, str]:
    """The reward model that judges the cycle's policy, and why. The live one (it did not train the
    policy), unless it no longer agrees with the users on this cycle's held-out pairs: its accuracy is
    under ``CYCLE_MIN_REWARD_ACCURACY`` (a new preference, or the first cycle after bootstrapping), or
    the new reward model's is above the upper end of the live one's 95% Wilson interval (on a handful
    of pairs a blind live model can score above the floor by luck). Then it could not tell a better
    policy from a worse one, and the new reward model judges: it did not train a DPO or KTO policy; it
    did train a PPO one, so for PPO the KL and length gates and the canary are what stand between its
    blind spots and users (the gate says so)."""
    baseline = reward_run.metrics.get("baseline") or {}
    live, pairs = baseline.get("accuracy"), int(baseline.get("pairs") or 0)
    if live is None:
        return None, "the live reward model judges it"
    new_accuracy = (reward_run.metrics.get("eval") or {}).get("accuracy")
    plausible = proportion(round(live * pairs), pairs).high if pairs else 1.0
    if live < settings.CYCLE_MIN_REWARD_ACCURACY:
        why = f"the live reward model agrees with the users on only {live:.0%} of the held-out pairs"
    elif new_accuracy is not None and plausible is not None and new_accuracy > plausible:
        why = (
            f"it agrees with the users on {new_accuracy:.0%} of the held-out pairs, more than the live reward"
            f" model's {live:.0%} of {pairs} could be by chance (95% interval up to {plausible:.0%})"
        )
    else:
        return None, "the live reward model judges it"
    new = reward_run.output_version
    trained = " (which also trains it)" if cycle.policy_kind == "ppo" else ""
    return new, f"{new.label if new else 'the new reward model'}{trained} judges it: {why}"


def _after_policy(cycle: Cycle) -> bool:
    assert cycle.policy_run is not None
    outcome = _run_outcome(cycle, cycle.policy_run)
    if not outcome:
        return False
    run = cycle.policy_run
    cycle.candidate = run.output_version
    gates = gate_rules.policy_gates(run.metrics.get("eval") or {}, thresholds(), judge=_judge_label(cycle, run))
    cycle.gates = [*cycle.gates, *(gate.as_dict() for gate in gates)]
    _next(cycle, Stage.GATES, "")
    failed = [gate for gate in gates if not gate.passed]
    if failed:
        summary = gate_rules.failed_summary(gates)
        _end(cycle, Status.NOT_DEPLOYED, summary, stage_detail="policy gates failed")
        _reject_candidates(cycle, summary)
        return False
    if settings.CYCLE_AUTO_APPROVE:
        why = f"cycle {cycle.pk}: every gate passed (CYCLE_AUTO_APPROVE)"
        assert cycle.candidate is not None
        model_version_approve(version_id=cycle.candidate.pk, actor=None, reason=why)
    else:
        cycle.status = Status.AWAITING_APPROVAL
    _next(cycle, Stage.APPROVAL, "every gate passed")
    return True


def _after_approval(cycle: Cycle) -> bool:
    assert cycle.candidate is not None
    candidate = ModelVersion.objects.get(pk=cycle.candidate.pk)
    if candidate.status == ModelVersion.Status.REJECTED:
        _end(cycle, Status.NOT_DEPLOYED, f"not deployed, because {candidate.label} was rejected")
        return False
    if candidate.status != ModelVersion.Status.APPROVED:
        return False  # waiting for a person
    reward = cycle.reward_run.output_version if cycle.reward_run else None
    if reward is not None and reward.status in (ModelVersion.Status.CANDIDATE, ModelVersion.Status.APPROVED):
        if reward.status == ModelVersion.Status.CANDIDATE:
            model_version_approve(version_id=reward.pk, actor=None, reason=f"cycle {cycle.pk}: its policy was approved")
        model_version_make_live(version=reward, reason=f"cycle {cycle.pk}: the reward model its policy passed with")
    try:
        canary = canary_start(
            version_id=candidate.pk,
            share=settings.CYCLE_CANARY_SHARE,
            actor=None,
            reason=f"cycle {cycle.pk}",
        )
    except RegistryError as exc:
        _end(cycle, Status.FAILED, f"the canary could not start: {exc.message}")
        return False
    cycle.canary = canary
    cycle.status = Status.CANARY  # saved by _next
    share = f"{canary.share:.0%}"
    _next(cycle, Stage.CANARY, f"{candidate.label} answers {share} of new conversations; the monitor decides")
    return True


def _after_canary(cycle: Cycle) -> bool:
    assert cycle.canary is not None
    canary = Canary.objects.get(pk=cycle.canary.pk)
    if canary.outcome == Canary.Outcome.RUNNING:
        return False
    status = Status.PROMOTED if canary.outcome == Canary.Outcome.PROMOTED else Status.STOPPED
    _next(cycle, Stage.DONE, canary.reason.splitlines()[-1] if canary.reason else canary.outcome)
    _end(cycle, status, f"{canary.version.label} {canary.get_outcome_display().lower()}: {canary.reason}")
    return False


def cycle_start_if_due(trigger: str) -> Cycle | None:
    """Start a cycle for the schedule or for new feedback, unless one is active (or none may start:
    no live models); the reason goes to the log."""
    if active_cycle() is not None:
        return None
    try:
        return cycle_create(policy_kind=settings.CYCLE_POLICY_KIND, trigger=trigger)
    except TrainingError as exc:
        logger.warning("a %s cycle did not start: %s", trigger, exc.message)
        return None


def cycles_sweep() -> list[str]:
    """Advance every active cycle; with CYCLE_EVERY_NEW_RATINGS set, start one once that many ratings
    arrived since the previous cycle. Returns what it did, one line each."""
    done = []
    for cycle_id in Cycle.objects.filter(status__in=Cycle.ACTIVE).values_list("id", flat=True):
        done.append(f"cycle {cycle_id}: {cycle_advance(cycle_id).status}")
    threshold = settings.CYCLE_EVERY_NEW_RATINGS
    if threshold and not done and new_ratings_since_last_cycle() >= threshold:
        cycle = cycle_start_if_due(Cycle.Trigger.FEEDBACK)
        if cycle is not None:
            done.append(f"cycle {cycle.pk}: started ({threshold}+ new ratings)")
    return done


def cycle_run_here(cycle_id: int, *, on_step: Callable[[Cycle], None] | None = None) -> Cycle:
    """Drive a cycle made with ``trained_by`` in this process: each stage's run is trained here
    (``runner.execute``) and the cycle advanced, until it waits for a person or for its canary, or
    ends. Runs again (``rlhf_cycle --resume ID --here``) after this process died: a queued run is
    trained, a run left running is the reaper's."""
    from training import runner  # the worker's code path (and, lazily, torch): only where runs train here

    while True:
        cycle = cycle_advance(cycle_id)
        if on_step is not None:
            on_step(cycle)
        queued = [run for run in (cycle.reward_run, cycle.policy_run) if run and run.status == RunStatus.QUEUED]
        if not cycle.is_active or not queued:
            return cycle
        runner.execute(queued[0].pk, worker=cycle.trained_by or "cycle_run_here")
