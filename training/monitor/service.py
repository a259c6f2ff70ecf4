"""One monitor pass: for each kind that serves chat answers (the policy), decide and act.

- With a running canary: the canary against the live version on the same days (both since the
  canary started), on the positive rate and, as a guard, the side-by-side votes between the two:
  promote, stop, continue, or not enough data.
- Without one: the live version since it was deployed against the version it replaced, over that
  version's last ``MONITOR_BASELINE_RATINGS`` ratings before the deploy: keep, roll back, continue,
  or not enough data. A deployment is watched until a keep or a rollback; one that restored an
  earlier version (a rollback, a redeploy) is not watched again, so a rollback never bounces back.

Every decision is stored (``MonitorDecision``) and announced to the webhooks. With
``MONITOR_AUTOMATIC_ACTIONS`` on (the default), a promote, stop or rollback is made through the
registry's services as the system, with the figures as the event's reason.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction

from core.stats import proportion
from feedback.analytics import rating_counts, vote_counts
from models_registry import webhooks
from models_registry.exceptions import RegistryError
from models_registry.models import Canary, DeploymentEvent, ModelVersion
from models_registry.selectors import live_version, previous_live, running_canary
from models_registry.services import canary_promote, canary_stop, model_version_rollback
from training.models import MonitorDecision
from training.monitor import stats

logger = logging.getLogger(__name__)

Decision = MonitorDecision.Decision
WATCHED_KINDS = (ModelVersion.Kind.POLICY,)  # reward models answer no one: nothing to rate them by


def monitor_settings() -> stats.Settings:
    return stats.Settings(
        alpha=settings.MONITOR_ALPHA,
        margin=settings.MONITOR_MARGIN,
        tau=settings.MONITOR_MIXTURE_SCALE,
        min_ratings=settings.MONITOR_MIN_RATINGS,
        min_votes=settings.MONITOR_MIN_VOTES,
        deploy_horizon=settings.MONITOR_DEPLOY_HORIZON,
    )


def monitor_pass(*, act: bool | None = None) -> list[MonitorDecision]:
    """Decide (and, when ``act``, act) for every watched kind; returns the decisions stored."""
    act = settings.MONITOR_AUTOMATIC_ACTIONS if act is None else act
    decisions = []
    for kind in WATCHED_KINDS:
        canary = running_canary(kind)
        decision = watch_canary(canary, act=act) if canary is not None else watch_deploy(kind, act=act)
        if decision is not None:
            decisions.append(decision)
    return decisions


def _counts(version_id: int, **window: Any) -> stats.Counts:
    positive, rated = rating_counts(version_id, per_user=settings.MONITOR_MAX_RATINGS_PER_USER, **window)
    return stats.Counts(positive, rated)


def watch_canary(canary: Canary, *, act: bool) -> MonitorDecision:
    since = canary.started_at
    new, baseline = _counts(canary.version_id, since=since), _counts(canary.baseline_id, since=since)
    votes = stats.Votes(
        *vote_counts(canary.version_id, canary.baseline_id, since=since, per_user=settings.MONITOR_MAX_RATINGS_PER_USER)
    )
    outcome = stats.decide(new, baseline, monitor_settings(), votes=votes, canary=True)
    decision = _record(
        MonitorDecision.Mode.CANARY,
        canary.version,
        canary.baseline,
        outcome,
        new,
        baseline,
        votes=votes,
        canary=canary,
    )
    if act and outcome.decision in (stats.PROMOTE, stats.STOP):
        _act(decision, lambda reason: _canary_action(canary.kind, outcome.decision, reason))
    return decision


def _canary_action(kind: str, decision: str, reason: str) -> None:
    if decision == stats.PROMOTE:
        canary_promote(kind=kind, actor=None, reason=reason)
    else:
        canary_stop(kind=kind, actor=None, reason=reason)


def watch_deploy(kind: str, *, act: bool) -> MonitorDecision | None:
    live = live_version(kind)
    if live is None or live.deployed_at is None:
        return None
    settled = MonitorDecision.objects.filter(
        version=live, deployed_at=live.deployed_at, decision__in=MonitorDecision.FINAL
    ).exists()
    if settled or _restored(live):
        return None
    previous = previous_live(live)
    if previous is None:
        return None
    new = _counts(live.pk, since=live.deployed_at)
    baseline = _counts(previous.pk, until=live.deployed_at, last=settings.MONITOR_BASELINE_RATINGS)
    outcome = stats.decide(new, baseline, monitor_settings(), canary=False)
    decision = _record(
        MonitorDecision.Mode.DEPLOY, live, previous, outcome, new, baseline, deployed_at=live.deployed_at
    )
    if act and outcome.decision == stats.ROLLBACK:
        _act(decision, lambda reason: model_version_rollback(kind=kind, actor=None, reason=reason))
    return decision


def _restored(live: ModelVersion) -> bool:
    """Whether ``live`` went live again from retired (a rollback or a redeploy of a known version)."""
    event = DeploymentEvent.objects.filter(version=live, to_status=ModelVersion.Status.LIVE).order_by("-id").first()
    return event is not None and event.from_status == ModelVersion.Status.RETIRED


def _figures(
    outcome: stats.Outcome, new: stats.Counts, baseline: stats.Counts, votes: stats.Votes | None
) -> dict[str, Any]:
    return {
        "version_rate": proportion(new.positive, new.n).as_dict(),
        "baseline_rate": proportion(baseline.positive, baseline.n).as_dict(),
        "votes_rate": proportion(votes.won * 2 + votes.tied, votes.n * 2).as_dict() if votes and votes.n else None,
        "difference": outcome.difference.__dict__ if outcome.difference else None,
        "votes": outcome.votes.__dict__ if outcome.votes else None,
        "needed": outcome.needed,
        "settings": monitor_settings().__dict__,
        "max_ratings_per_user": settings.MONITOR_MAX_RATINGS_PER_USER,
    }


def _record(
    mode: str,
    version: ModelVersion,
    baseline: ModelVersion,
    outcome: stats.Outcome,
    new: stats.Counts,
    base: stats.Counts,
    *,
    votes: stats.Votes | None = None,
    canary: Canary | None = None,
    deployed_at: datetime | None = None,
) -> MonitorDecision:
    with transaction.atomic():
        decision = MonitorDecision.objects.create(
            kind=version.kind,
            mode=mode,
            version=version,
            baseline=baseline,
            canary=canary,
            deployed_at=deployed_at,
            decision=outcome.decision,
            reason=outcome.reason,
            version_positive=new.positive,
            version_rated=new.n,
            baseline_positive=base.positive,
            baseline_rated=base.n,
            votes_won=votes.won if votes else 0,
            votes_lost=votes.lost if votes else 0,
            votes_tied=votes.tied if votes else 0,
            figures=_figures(outcome, new, base, votes),
        )
        webhooks.notify_on_commit("monitor_decision", decision_payload(decision))
    logger.info("monitor: %s %s vs %s: %s", decision.decision, version.label, baseline.label, outcome.reason)
    return decision


def _act(decision: MonitorDecision, change: Any) -> None:
    reason = f"monitor decision {decision.pk}, {decision.get_decision_display().lower()}: {decision.reason}"
    try:
        change(reason)
    except RegistryError as exc:  # someone acted first (a stop, a deploy): the decision stands, unacted
        logger.warning("monitor decision %s could not be carried out: %s", decision.pk, exc.message)
        MonitorDecision.objects.filter(pk=decision.pk).update(error=exc.message)
        decision.error = exc.message
        return
    MonitorDecision.objects.filter(pk=decision.pk).update(acted=True)
    decision.acted = True


def decision_payload(decision: MonitorDecision) -> dict[str, Any]:
    return {
        "id": decision.pk,
        "kind": decision.kind,
        "mode": decision.mode,
        "version": decision.version.label,
        "baseline": decision.baseline.label,
        "decision": decision.decision,
        "reason": decision.reason,
        "version_rated": decision.version_rated,
        "version_positive": decision.version_positive,
        "baseline_rated": decision.baseline_rated,
        "baseline_positive": decision.baseline_positive,
        "votes": {"won": decision.votes_won, "lost": decision.votes_lost, "tied": decision.votes_tied},
        "figures": decision.figures,
        "acted": decision.acted,
        "at": decision.created_at,
    }
