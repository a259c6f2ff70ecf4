"""The monitor's decisions on crafted feedback: promote, stop, continue, not enough data for a canary;
keep, roll back for a direct deploy; the figures it stores and the registry changes it makes."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

from models_registry.models import Canary, DeploymentEvent, ModelVersion
from models_registry.services import canary_start, model_version_deploy, model_version_make_live
from tests.factories import ModelVersionFactory
from tests.monitoring_data import rate, vote
from training.models import MonitorDecision
from training.monitor.service import monitor_pass

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.REGISTRY_FOUR_EYES = False
    settings.MONITOR_MIN_RATINGS = 100
    settings.MONITOR_MIN_VOTES = 30
    settings.MONITOR_MAX_RATINGS_PER_USER = 20
    settings.MONITOR_AUTOMATIC_ACTIONS = True


@pytest.fixture
def live():
    return model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))


@pytest.fixture
def canary(live):
    candidate = ModelVersionFactory(number=2, status="approved")
    return canary_start(version_id=candidate.id, share=0.5, actor=None)


def only_decision() -> MonitorDecision:
    (decision,) = monitor_pass()
    return decision


def test_a_better_canary_is_promoted_and_the_event_says_why(canary, live, django_capture_on_commit_callbacks):
    rate(canary.version, 300, 0.80)
    rate(live, 300, 0.60)

    with django_capture_on_commit_callbacks(execute=True):
        decision = only_decision()

    assert (decision.decision, decision.mode, decision.acted) == ("promote", "canary", True)
    assert (decision.version_rated, decision.version_positive) == (300, 240)
    assert (decision.baseline_rated, decision.baseline_positive) == (300, 180)
    assert decision.figures["difference"]["low"] > -0.02
    assert decision.figures["version_rate"]["value"] == 0.8
    assert decision.figures["version_rate"]["low"] < 0.8 < decision.figures["version_rate"]["high"]
    canary.refresh_from_db()
    live.refresh_from_db()
    assert (canary.version.status, live.status, canary.outcome) == ("live", "retired", "promoted")
    event = DeploymentEvent.objects.filter(version=canary.version, to_status="live").get()
    assert event.actor is None
    assert event.reason.startswith(f"canary promoted: monitor decision {decision.pk}, promote:")
    assert "positive rate 0.800 (300 ratings) vs 0.600 (300)" in event.reason


def test_a_worse_canary_is_stopped_and_returns_to_approved(canary, live):
    rate(canary.version, 300, 0.45)
    rate(live, 300, 0.70)

    decision = only_decision()

    assert (decision.decision, decision.acted) == ("stop", True)
    assert decision.figures["difference"]["high"] < 0
    canary.refresh_from_db()
    canary.version.refresh_from_db()
    assert (canary.outcome, canary.version.status) == ("stopped", "approved")
    assert "worse than the baseline" in canary.reason
    assert ModelVersion.objects.get(status="live") == live


def test_side_by_side_votes_alone_can_stop_a_canary(canary, live):
    rate(canary.version, 120, 0.6)
    rate(live, 120, 0.6)
    vote(canary.version, live, won=10, lost=50)

    decision = only_decision()

    assert decision.decision == "stop"
    assert (decision.votes_won, decision.votes_lost) == (10, 50)
    assert "side-by-side votes prefer the baseline" in decision.reason
    assert decision.figures["votes"]["high"] < 0.5


def test_too_few_ratings_is_a_decision_too_and_changes_nothing(canary, live):
    rate(canary.version, 30, 1.0)
    rate(live, 200, 0.5)

    decision = only_decision()

    assert (decision.decision, decision.acted) == ("not_enough_data", False)
    assert decision.figures["needed"] == 70
    assert "30 ratings of the new version and 200 of the baseline; at least 100 each are needed" in decision.reason
    canary.refresh_from_db()
    assert canary.outcome == "running"


def test_an_undecided_canary_continues_saying_how_many_ratings_it_needs(canary, live):
    rate(canary.version, 150, 0.60)
    rate(live, 150, 0.62)

    decision = only_decision()

    assert decision.decision == "continue"
    assert decision.figures["needed"] > 0
    assert f"about {decision.figures['needed']} more ratings each" in decision.reason
    assert Canary.objects.get().outcome == "running"


def test_one_prolific_rater_counts_at_most_the_cap(canary, live):
    rate(canary.version, 200, 0.0, per_user=200)  # one user, 200 bad ratings: counts 20
    rate(canary.version, 100, 0.9)
    rate(live, 300, 0.6)

    decision = only_decision()

    assert decision.version_rated == 120
    assert decision.version_positive == 90


def deploy_over(live, *, before: float, after: float, n: int = 400) -> ModelVersion:
    rate(live, n, before)
    new = ModelVersionFactory(number=2, status="approved")
    model_version_deploy(version_id=new.id, actor=None, reason="direct deploy")
    new.refresh_from_db()
    rate(new, n, after)
    return new


def test_a_direct_deploy_that_holds_up_is_kept_and_then_left_alone(live):
    new = deploy_over(live, before=0.60, after=0.70)

    decision = only_decision()

    assert (decision.decision, decision.mode, decision.baseline, decision.deployed_at) == (
        "keep",
        "deploy",
        live,
        new.deployed_at,
    )
    assert monitor_pass() == []  # settled: this deployment is not watched again
    new.refresh_from_db()
    assert new.status == "live"


def test_a_worse_direct_deploy_is_rolled_back_by_the_system(live, django_capture_on_commit_callbacks, settings):
    settings.REGISTRY_WEBHOOK_URLS = ["http://127.0.0.1:9/hook"]
    settings.REGISTRY_WEBHOOK_SECRET = "s"
    new = deploy_over(live, before=0.70, after=0.45)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        decision = only_decision()

    assert (decision.decision, decision.acted) == ("rollback", True)
    live.refresh_from_db()
    new.refresh_from_db()
    assert (live.status, new.status) == ("live", "retired")
    event = DeploymentEvent.objects.filter(version=live, to_status="live").order_by("-id").first()
    assert event.actor is None
    assert event.reason.startswith(f"monitor decision {decision.pk}, roll back: worse than the baseline")
    assert len(callbacks) >= 2  # the decision's webhook and the rollback's events
    assert monitor_pass() == []  # the restored version is not watched again


def test_the_baseline_of_a_deploy_is_the_last_ratings_of_the_version_it_replaced(live, settings):
    settings.MONITOR_BASELINE_RATINGS = 150
    rate(live, 300, 0.0)  # old, bad ratings
    rate(live, 150, 1.0)  # the last 150 before the deploy
    new = ModelVersionFactory(number=2, status="approved")
    model_version_deploy(version_id=new.id, actor=None)
    rate(new, 150, 0.9)

    decision = only_decision()

    assert (decision.baseline_rated, decision.baseline_positive) == (150, 150)


def test_advice_only_stores_the_decision_and_changes_nothing(canary, live):
    rate(canary.version, 300, 0.45)
    rate(live, 300, 0.70)

    (decision,) = monitor_pass(act=False)

    assert (decision.decision, decision.acted) == ("stop", False)
    canary.refresh_from_db()
    assert canary.outcome == "running"


def test_a_decision_someone_else_made_first_is_kept_with_the_reason(canary, live, monkeypatch):
    from models_registry.services import canary_stop
    from training.monitor import service

    rate(canary.version, 300, 0.45)
    rate(live, 300, 0.70)

    def operator_first(**kwargs):
        canary_stop(kind="policy", actor=None, reason="by hand")
        canary_stop(**kwargs)

    monkeypatch.setattr(service, "canary_stop", operator_first)
    decision = only_decision()

    assert (decision.decision, decision.acted, decision.error) == ("stop", False, "No policy canary is running.")


def test_the_command_prints_every_decision_and_json(canary, live):
    rate(canary.version, 30, 1.0)
    rate(live, 200, 0.5)
    out = io.StringIO()
    call_command("monitor_versions", stdout=out)
    assert "policy:2 vs policy:1 [canary]: NOT ENOUGH DATA" in out.getvalue()
    out = io.StringIO()
    call_command("monitor_versions", "--json", stdout=out)
    (payload,) = json.loads(out.getvalue())
    assert (payload["version"], payload["baseline"], payload["decision"]) == ("policy:2", "policy:1", "not_enough_data")
    assert MonitorDecision.objects.count() == 2


def test_with_nothing_to_watch_a_pass_decides_nothing(live):
    assert monitor_pass() == []  # bootstrapped: no earlier version to compare with
    out = io.StringIO()
    call_command("monitor_versions", stdout=out)
    assert out.getvalue().startswith("Nothing to watch")


def test_a_deploy_with_no_evidence_of_harm_by_the_horizon_is_kept(live, settings):
    settings.MONITOR_DEPLOY_HORIZON = 300
    deploy_over(live, before=0.60, after=0.58, n=300)

    decision = only_decision()

    assert decision.decision == "keep"
    assert decision.reason.startswith("no evidence it is worse after 300 ratings (the deploy horizon, 300)")
