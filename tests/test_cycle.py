"""The improvement cycle's stages, gates and endings, with its runs' outcomes crafted (the runs
themselves are tested in test_training_pipeline; real cycles, trained, in e2e/test_simulation)."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from feedback.models import Conversation, Feedback
from models_registry.models import Canary, ModelVersion
from models_registry.services import canary_promote, canary_stop, model_version_approve, model_version_register
from tests.monitoring_data import rate
from training.cycle import service
from training.erasure import user_forget
from training.exceptions import RunConflict
from training.models import Cycle, TrainingRun
from training.processor import ProcessorOptions, snapshot_build

pytestmark = pytest.mark.django_db

GOOD_REWARD = {"pairs": 60, "accuracy": 0.92, "mean_margin": 2.0, "calibration_ece": 0.05, "brier": 0.1}
LIVE_REWARD = {"pairs": 60, "accuracy": 0.88, "mean_margin": 0.1, "calibration_ece": 0.1, "brier": 0.2}
GOOD_POLICY = {
    "prompts": 64, "mean_reward": 1.0, "reference_mean_reward": 0.2, "win_rate": 0.8, "kl": 4.0,
    "mean_length": 60.0, "reference_mean_length": 55.0,
}  # fmt: skip


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.REGISTRY_FOUR_EYES = False
    settings.CYCLE_MIN_NEW_RATINGS = 50
    settings.CYCLE_AUTO_APPROVE = False
    settings.CYCLE_CANARY_SHARE = 0.2


@pytest.fixture
def rated(live_models):
    """The live policy and reward model, and 60 ratings of the live policy's answers."""
    rate(live_models[0], 60, 0.5)
    return live_models


def start(django_capture_on_commit_callbacks, **kwargs) -> Cycle:
    with django_capture_on_commit_callbacks(execute=False):
        return service.cycle_create(**kwargs)


def finish(run: TrainingRun, *, evaluation: dict, baseline: dict | None = None, status: str = "succeeded") -> None:
    """The run ends as a worker would end it: a registered candidate with its evaluation."""
    if status != "succeeded":
        TrainingRun.objects.filter(pk=run.pk).update(status=status, error_message=f"it {status}")
        return
    version = model_version_register(
        kind=run.output_kind, artifact_path=f"/m/{run.pk}", checksums={"a": "0" * 64}, requested_by=run.requested_by
    )
    metrics = {"eval": evaluation, **({"baseline": baseline} if baseline else {})}
    TrainingRun.objects.filter(pk=run.pk).update(
        status="succeeded", output_version=version, metrics=metrics, progress=1
    )


def advance(cycle: Cycle, django_capture_on_commit_callbacks) -> Cycle:
    with django_capture_on_commit_callbacks(execute=False):
        return service.cycle_advance(cycle.pk)


def through_gates(cycle, capture, policy=GOOD_POLICY) -> Cycle:
    cycle = advance(cycle, capture)
    finish(cycle.reward_run, evaluation=GOOD_REWARD, baseline=LIVE_REWARD)
    cycle = advance(cycle, capture)
    finish(cycle.policy_run, evaluation=policy)
    return advance(cycle, capture)


def test_a_cycle_goes_from_feedback_to_a_canary_once_a_person_approves(rated, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    cycle = start(capture, policy_kind="ppo")

    cycle = advance(cycle, capture)
    assert (cycle.stage, cycle.reward_run.kind, cycle.reward_run.status) == ("reward", "reward", "queued")
    assert cycle.new_ratings == 60
    assert cycle.reward_run.config["test_fraction"] == 0.25  # a held-out split sized for judging
    finish(cycle.reward_run, evaluation=GOOD_REWARD, baseline=LIVE_REWARD)
    cycle = advance(cycle, capture)
    policy_run = cycle.policy_run
    assert (cycle.stage, policy_run.kind) == ("policy", "ppo")
    assert policy_run.reward_version == cycle.reward_run.output_version  # PPO scored by the new reward model
    assert policy_run.judge_version == rated[1]  # judged by the live one, which did not train it
    assert "the live reward model judges it" in cycle.stages[-2]["detail"]
    assert policy_run.dataset == cycle.reward_run.dataset  # one snapshot for the whole cycle
    finish(policy_run, evaluation=GOOD_POLICY)
    cycle = advance(cycle, capture)

    assert (cycle.status, cycle.stage) == ("awaiting_approval", "approval")
    assert [(g["name"], g["passed"]) for g in cycle.gates] == [
        ("new_feedback", True), ("reward_accuracy", True), ("reward_vs_live", True), ("reward_calibration", True),
        ("policy_win_rate", True), ("policy_kl", True), ("policy_length", True),
    ]  # fmt: skip
    assert advance(cycle, capture).status == "awaiting_approval"  # waits for a person
    model_version_approve(version_id=cycle.candidate.pk, actor=None)
    cycle = advance(cycle, capture)

    assert (cycle.status, cycle.stage) == ("canary", "canary")
    canary = Canary.objects.get()
    assert (canary.version, canary.share, canary.baseline) == (cycle.candidate, 0.2, rated[0])
    reward = cycle.reward_run.output_version
    reward.refresh_from_db()
    assert reward.status == "live"  # the reward model its policy passed with
    canary_promote(kind="policy", actor=None, reason="the monitor says so")
    cycle = advance(cycle, capture)
    assert (cycle.status, cycle.stage) == ("promoted", "done")
    assert [s["name"] for s in cycle.stages] == ["feedback", "reward", "policy", "gates", "approval", "canary"]
    assert all(s["status"] == "done" for s in cycle.stages)


@pytest.mark.parametrize(("kind", "trained_by_judge"), [("ppo", True), ("dpo", False)])
def test_a_live_reward_model_that_disagrees_with_users_does_not_judge(
    rated, kind, trained_by_judge, django_capture_on_commit_callbacks
):
    """The first cycle on a new preference: the live reward model ranks the held-out pairs no better
    than chance, so it cannot tell a better policy from a worse one; the cycle's reward model judges,
    and the gate and the stage say so."""
    capture = django_capture_on_commit_callbacks
    cycle = advance(start(capture, policy_kind=kind), capture)
    finish(cycle.reward_run, evaluation=GOOD_REWARD, baseline={**LIVE_REWARD, "accuracy": 0.52})
    cycle = advance(cycle, capture)

    new_reward = cycle.reward_run.output_version
    assert cycle.policy_run.judge_version == new_reward
    assert "agrees with the users on only 52% of the held-out pairs" in cycle.stages[-2]["detail"]
    finish(cycle.policy_run, evaluation=GOOD_POLICY)
    cycle = advance(cycle, capture)
    win_rate = next(g for g in cycle.gates if g["name"] == "policy_win_rate")
    assert f"judged by the cycle's reward model {new_reward.label}" in win_rate["detail"]
    assert ("which also trained it" in win_rate["detail"]) is trained_by_judge


def test_a_live_reward_model_lucky_on_a_few_pairs_does_not_judge(rated, settings, django_capture_on_commit_callbacks):
    """4 of 5 held-out pairs is above the floor, but a blind model gets there by luck (the 95% interval
    reaches down to 38%); the new reward model's 5 of 5 is above what 4 of 5 could be: it judges."""
    settings.CYCLE_MIN_HELDOUT_PAIRS = 5
    capture = django_capture_on_commit_callbacks
    cycle = advance(start(capture, policy_kind="dpo"), capture)
    lucky = {**LIVE_REWARD, "pairs": 5, "accuracy": 0.8}
    finish(cycle.reward_run, evaluation={**GOOD_REWARD, "pairs": 5, "accuracy": 1.0}, baseline=lucky)
    cycle = advance(cycle, capture)

    assert cycle.policy_run.judge_version == cycle.reward_run.output_version
    assert "more than the live reward model's 80% of 5 could be by chance" in cycle.stages[-2]["detail"]


def test_with_auto_approve_every_gate_passed_is_enough(rated, settings, django_capture_on_commit_callbacks):
    settings.CYCLE_AUTO_APPROVE = True
    cycle = through_gates(
        start(django_capture_on_commit_callbacks, policy_kind="dpo"), django_capture_on_commit_callbacks
    )
    assert cycle.status == "canary"
    assert ModelVersion.objects.get(pk=cycle.candidate_id).status == "canary"
    assert cycle.candidate.events.filter(to_status="approved", actor=None).exists()
    assert cycle.policy_run.reward_version == rated[1]  # DPO needs no new reward model to train


def test_a_canary_the_monitor_stops_ends_the_cycle_stopped(rated, settings, django_capture_on_commit_callbacks):
    settings.CYCLE_AUTO_APPROVE = True
    cycle = through_gates(start(django_capture_on_commit_callbacks), django_capture_on_commit_callbacks)
    canary_stop(kind="policy", actor=None, reason="worse than the baseline")
    cycle = advance(cycle, django_capture_on_commit_callbacks)
    assert cycle.status == "stopped"
    assert "worse than the baseline" in cycle.reason


def test_too_little_new_feedback_ends_it_not_deployed(live_models, django_capture_on_commit_callbacks):
    rate(live_models[0], 10, 0.5)
    cycle = advance(start(django_capture_on_commit_callbacks), django_capture_on_commit_callbacks)
    assert cycle.status == "not_deployed"
    assert cycle.reason == (
        "not deployed, because new_feedback: 10 ratings given since the previous cycle (at least 50 are needed)"
    )
    assert not TrainingRun.objects.exists()


def test_feedback_counts_only_since_the_previous_cycle(rated, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    first = advance(start(capture), capture)
    service.cycle_cancel(cycle_id=first.pk)
    Cycle.objects.filter(pk=first.pk).update(status=Cycle.Status.NOT_DEPLOYED)  # it ran its gates
    Feedback.objects.update(created_at=timezone.now() - timezone.timedelta(days=1))
    rate(rated[0], 5, 0.5)
    second = advance(start(capture), capture)
    assert second.new_ratings == 5
    assert second.status == "not_deployed"


def test_a_cancelled_cycle_leaves_its_feedback_to_the_next(rated, django_capture_on_commit_callbacks):
    capture = django_capture_on_commit_callbacks
    first = advance(start(capture), capture)
    service.cycle_cancel(cycle_id=first.pk)
    before = Feedback.objects.exclude(thumbs__isnull=True, rating__isnull=True).count()
    rate(rated[0], 5, 0.5)
    second = advance(start(capture), capture)
    assert second.feedback_from is None
    assert second.new_ratings == before + 5
    assert second.status == "running"


@pytest.mark.parametrize(
    ("reward", "baseline", "failing"),
    [
        ({**GOOD_REWARD, "accuracy": 0.6}, LIVE_REWARD, "reward_accuracy"),
        ({**GOOD_REWARD, "pairs": 5}, LIVE_REWARD, "reward_accuracy"),
        (GOOD_REWARD, {**LIVE_REWARD, "accuracy": 0.95}, "reward_vs_live"),
        ({**GOOD_REWARD, "calibration_ece": 0.4}, LIVE_REWARD, "reward_calibration"),
    ],
)
def test_a_failed_reward_gate_ends_it_and_rejects_the_candidate(
    rated, django_capture_on_commit_callbacks, reward, baseline, failing
):
    cycle = advance(start(django_capture_on_commit_callbacks), django_capture_on_commit_callbacks)
    finish(cycle.reward_run, evaluation=reward, baseline=baseline)
    cycle = advance(cycle, django_capture_on_commit_callbacks)
    assert cycle.status == "not_deployed"
    assert cycle.reason.startswith(f"not deployed, because {failing}:")
    assert cycle.policy_run is None
    assert ModelVersion.objects.get(pk=cycle.reward_run.output_version_id).status == "rejected"


@pytest.mark.parametrize(
    ("policy", "failing"),
    [
        ({**GOOD_POLICY, "win_rate": 0.4}, "policy_win_rate"),
        ({**GOOD_POLICY, "kl": 80.0}, "policy_kl"),
        ({**GOOD_POLICY, "mean_length": 200.0}, "policy_length"),
        ({"prompts": 0}, "policy_win_rate"),
    ],
)
def test_a_failed_policy_gate_ends_it_not_deployed(rated, django_capture_on_commit_callbacks, policy, failing):
    cycle = through_gates(start(django_capture_on_commit_callbacks), django_capture_on_commit_callbacks, policy)
    assert cycle.status == "not_deployed"
    assert failing in cycle.reason
    assert ModelVersion.objects.get(pk=cycle.candidate_id).status == "rejected"
    assert not Canary.objects.exists()


def test_a_snapshot_invalidated_by_an_erasure_after_the_reward_run_fails_the_cycle_clearly(
    rated, tmp_path, django_capture_on_commit_callbacks
):
    capture = django_capture_on_commit_callbacks
    cycle = advance(start(capture), capture)
    snapshot = snapshot_build(options=ProcessorOptions(), root=tmp_path)
    TrainingRun.objects.filter(pk=cycle.reward_run.pk).update(dataset=snapshot)
    finish(cycle.reward_run, evaluation=GOOD_REWARD, baseline=LIVE_REWARD)
    user = Conversation.objects.order_by("created_at").first().user
    with capture(execute=True):
        user_forget(user=user)

    cycle = advance(cycle, capture)

    assert cycle.status == "failed"
    assert cycle.policy_run is None  # no run on the invalidated snapshot
    assert cycle.reason.startswith(f"dataset snapshot {snapshot.pk} was invalidated by a user erasure after")
    assert "Start a new cycle: it builds a fresh snapshot." in cycle.reason
    assert cycle.stages[-1]["detail"] == "dataset invalidated"
    reward = cycle.reward_run.output_version
    reward.refresh_from_db()
    assert reward.status == "rejected"
    assert TrainingRun.objects.count() == 1


def test_a_failed_run_ends_the_cycle_with_its_reason(rated, django_capture_on_commit_callbacks):
    cycle = advance(start(django_capture_on_commit_callbacks), django_capture_on_commit_callbacks)
    finish(cycle.reward_run, evaluation={}, status="failed")
    cycle = advance(cycle, django_capture_on_commit_callbacks)
    assert cycle.status == "failed"
    assert cycle.reason == f"{cycle.reward_run} failed: it failed"


def test_cancelling_a_cycle_cancels_its_run_and_two_never_run_at_once(rated, django_capture_on_commit_callbacks):
    cycle = advance(start(django_capture_on_commit_callbacks), django_capture_on_commit_callbacks)
    with pytest.raises(RunConflict, match="one cycle runs at a time"):
        start(django_capture_on_commit_callbacks)

    service.cycle_cancel(cycle_id=cycle.pk, reason="changed my mind")

    cycle.refresh_from_db()
    cycle.reward_run.refresh_from_db()
    assert (cycle.status, cycle.reason, cycle.reward_run.status) == ("cancelled", "changed my mind", "cancelled")
    assert start(django_capture_on_commit_callbacks).status == "running"  # the next one may start


def test_cancelling_a_cycle_in_canary_stops_the_canary(rated, settings, django_capture_on_commit_callbacks):
    settings.CYCLE_AUTO_APPROVE = True
    cycle = through_gates(start(django_capture_on_commit_callbacks), django_capture_on_commit_callbacks)
    service.cycle_cancel(cycle_id=cycle.pk)
    assert Canary.objects.get().outcome == "stopped"
    assert ModelVersion.objects.get(pk=cycle.candidate.pk).status == "rejected"


def test_a_stages_run_ending_tells_its_cycle(rated, django_capture_on_commit_callbacks, monkeypatch):
    from training import runner, services

    sent = []
    monkeypatch.setattr(services.current_app, "send_task", lambda name, args: sent.append((name, args)))
    cycle = advance(start(django_capture_on_commit_callbacks), django_capture_on_commit_callbacks)
    TrainingRun.objects.filter(pk=cycle.reward_run.pk).update(config={"epochs": "broken"})  # fails at once

    assert runner.execute(cycle.reward_run.pk, worker="w") == "failed"

    assert sent == [("training.tasks.cycle_advance", [cycle.pk])]


def test_the_command_and_its_report(rated, django_capture_on_commit_callbacks):
    out = io.StringIO()
    with django_capture_on_commit_callbacks(execute=False):
        call_command("rlhf_cycle", "--policy", "kto", "--json", stdout=out)
    report = json.loads(out.getvalue().split("\n", 1)[1])
    assert (report["policy_kind"], report["status"], report["stage"]) == ("kto", "running", "feedback")
    with pytest.raises(CommandError, match="one cycle runs at a time"):
        call_command("rlhf_cycle", stdout=io.StringIO())
    call_command("rlhf_cycle", "--cancel", str(report["id"]), stdout=io.StringIO())
    assert Cycle.objects.get().status == "cancelled"


def test_a_cycle_trained_here_never_sends_its_runs_to_the_workers(rated, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as sent:
        cycle = service.cycle_create(policy_kind="dpo", trained_by="gpu-runner:42")
        cycle = service.cycle_advance(cycle.pk)
    assert cycle.reward_run.status == "queued"
    assert sent == []  # neither the cycle's advance nor its reward run: the runner trains them
    finish(cycle.reward_run, evaluation=GOOD_REWARD, baseline=LIVE_REWARD)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        cycle = service.cycle_advance(cycle.pk)
    assert (cycle.stage, cycle.policy_run.status, sent) == ("policy", "queued", [])

    with django_capture_on_commit_callbacks(execute=False) as sent:
        service.cycle_cancel(cycle_id=cycle.pk)
        service.cycle_create(policy_kind="dpo")
    assert len(sent) == 1  # a workers' cycle: its advance is sent to them


def test_the_command_resumes_only_a_cycle_it_trains(rated, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        workers = service.cycle_create(policy_kind="dpo")
    with pytest.raises(CommandError, match="trained by the workers"):
        call_command("rlhf_cycle", "--resume", str(workers.pk), "--here", stdout=io.StringIO())
    service.cycle_cancel(cycle_id=workers.pk)
    with pytest.raises(CommandError, match="has ended"):
        call_command("rlhf_cycle", "--resume", str(workers.pk), "--wait", stdout=io.StringIO())
    with pytest.raises(CommandError, match="does not exist"):
        call_command("rlhf_cycle", "--resume", "999", "--here", stdout=io.StringIO())
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("rlhf_cycle", "--config", "{reward", stdout=io.StringIO())


def test_a_workflow_starts_the_cycle_as_its_api_tokens_user(
    rated, alice, monkeypatch, django_capture_on_commit_callbacks
):
    from django.contrib.auth.models import Permission
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=alice)
    monkeypatch.setenv("RLHF_API_TOKEN", token.key)
    with pytest.raises(CommandError, match="may not start improvement cycles"):
        call_command("rlhf_cycle", "--token-env", "RLHF_API_TOKEN", stdout=io.StringIO())
    alice.user_permissions.add(Permission.objects.get(codename="start_cycle"))
    with django_capture_on_commit_callbacks(execute=False):
        call_command("rlhf_cycle", "--token-env", "RLHF_API_TOKEN", "--trigger", "workflow", stdout=io.StringIO())
    cycle = Cycle.objects.get()
    assert (cycle.requested_by, cycle.trigger) == (alice, "workflow")
    monkeypatch.setenv("RLHF_API_TOKEN", "not-a-token")
    with pytest.raises(CommandError, match="not a valid token"):
        call_command("rlhf_cycle", "--token-env", "RLHF_API_TOKEN", stdout=io.StringIO())
    monkeypatch.setenv("RLHF_API_TOKEN", "")
    with pytest.raises(CommandError, match="is empty"):
        call_command("rlhf_cycle", "--token-env", "RLHF_API_TOKEN", stdout=io.StringIO())


def test_a_bad_config_is_refused_per_field(rated):
    from training.exceptions import TrainingError

    with pytest.raises(TrainingError) as caught:
        service.cycle_create(config={"reward": {"epochs": "x"}, "typo": {}})
    assert caught.value.fields == {"typo": ["Unknown part; use 'reward' or 'policy'."]}
    with pytest.raises(TrainingError) as caught:
        service.cycle_create(config={"reward": {"epochs": "x"}})
    assert caught.value.fields == {"reward.epochs": ["Must be a number, not str."]}
    assert not Cycle.objects.exists()


# --- The admin and the API -----------------------------------------------------------------------


def test_the_admin_starts_a_cycle_and_shows_its_timeline_gates_and_progress(
    admin_client_, rated, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        response = admin_client_.post(
            "/admin/training/cycle/start/", {"policy": "dpo", "config": '{"policy": {"beta": 0.3}}'}
        )
    cycle = Cycle.objects.get()
    assert response["Location"] == f"/admin/training/cycle/{cycle.pk}/change/"
    assert (cycle.policy_kind, cycle.config["policy"]["beta"]) == ("dpo", 0.3)
    cycle = advance(cycle, django_capture_on_commit_callbacks)

    html = admin_client_.get(f"/admin/training/cycle/{cycle.pk}/change/").content.decode()

    assert 'Train the reward model</td><td class="stage-running">running' in html
    assert 'Check for new feedback</td><td class="stage-done">done' in html
    assert 'Canary, watched by the monitor</td><td class="stage-to-come">to come' in html
    assert 'new_feedback</td><td class="gate-pass">pass' in html
    assert f'hx-get="/admin/training/cycle/{cycle.pk}/progress/?detail=1"' in html
    assert "Cancel cycle…" in html
    listing = admin_client_.get("/admin/training/cycle/").content.decode()
    assert "Start a cycle" in listing


def test_the_admin_refuses_a_bad_config_and_starts_nothing(admin_client_, rated):
    response = admin_client_.post(
        "/admin/training/cycle/start/", {"policy": "ppo", "config": '{"reward": {"epochs": -1}}'}
    )
    assert response.status_code == 200
    assert "reward.epochs: Must be between 0.01 and 1000; got -1." in response.content.decode()
    assert not Cycle.objects.exists()


def test_the_admin_cancels_a_cycle_after_confirmation(admin_client_, rated, django_capture_on_commit_callbacks):
    cycle = advance(start(django_capture_on_commit_callbacks), django_capture_on_commit_callbacks)
    assert "Yes, cancel the cycle" in admin_client_.get(f"/admin/training/cycle/{cycle.pk}/cancel/").content.decode()
    admin_client_.post(f"/admin/training/cycle/{cycle.pk}/cancel/")
    cycle.refresh_from_db()
    assert (cycle.status, cycle.reason) == ("cancelled", "cancelled by operator")


def test_the_api_starts_follows_and_cancels_cycles(api, alice, rated, django_capture_on_commit_callbacks):
    from django.contrib.auth.models import Permission

    assert api.post("/api/training/cycles", {"policy": "ppo"}, format="json").status_code == 403
    alice.user_permissions.set(Permission.objects.filter(codename__in=["start_cycle", "view_cycle"]))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        created = api.post(
            "/api/training/cycles", {"policy": "kto"}, format="json", headers={"Idempotency-Key": "cycle-1"}
        )
        again = api.post(
            "/api/training/cycles", {"policy": "kto"}, format="json", headers={"Idempotency-Key": "cycle-1"}
        )
    assert created.status_code == 201
    assert again.json() == created.json()
    assert len(callbacks) == 1  # one advance task: the retry started nothing
    body = created.json()
    assert (body["policy_kind"], body["status"], body["requested_by"]) == ("kto", "running", "alice")
    assert api.get(f"/api/training/cycles/{body['id']}").json()["id"] == body["id"]
    assert [c["id"] for c in api.get("/api/training/cycles", {"status": "running"}).json()["results"]] == [body["id"]]
    conflict = api.post("/api/training/cycles", {"policy": "ppo"}, format="json")
    assert (conflict.status_code, conflict.json()["error"]["code"]) == (409, "conflict")
    cancelled = api.post(f"/api/training/cycles/{body['id']}/cancel")
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    bad = api.get("/api/training/cycles", {"status": "bogus"})
    assert bad.status_code == 400


@pytest.mark.django_db(transaction=True)
def test_a_cycle_started_while_the_broker_is_away_is_advanced_by_the_sweep(rated, broker_unreachable, caplog):
    cycle = service.cycle_create(policy_kind="dpo")  # its advance is sent after the commit, and fails

    assert f"cycle {cycle.pk}: the broker is unreachable" in caplog.text
    assert Cycle.objects.get(pk=cycle.pk).stage == "feedback"
    assert service.cycles_sweep() == [f"cycle {cycle.pk}: running"]  # beat's sweep, once it runs
    cycle.refresh_from_db()
    assert (cycle.stage, cycle.reward_run.status, cycle.reward_run.task_id) == ("reward", "queued", "")
