"""Training runs as rows: the API, the services' state changes, the reaper and the command's parsing.
The runs themselves (dataset, TRL, registration) are in test_training_pipeline.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from feedback.models import UserSatisfaction
from models_registry.models import ModelVersion
from tests.factories import ModelVersionFactory, UserFactory
from training import services
from training.exceptions import RunConflict, TrainingError
from training.management.commands.train import parse_settings
from training.models import TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def trainer(db):
    """A user allowed to view, start and cancel runs (not staff)."""
    user = UserFactory(username="trainer")
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="training", codename__in=["view_trainingrun", "start_trainingrun"]
        )
    )
    return user


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def running_run(**fields) -> TrainingRun:
    return TrainingRun.objects.create(
        kind="reward", status="running", started_at=timezone.now(), heartbeat_at=timezone.now(), **fields
    )


# --- API ---------------------------------------------------------------------------------------
def test_it_queues_a_run_with_defaults_filled_and_sends_the_task_on_commit(
    trainer, live_models, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client_for(trainer).post(
            "/api/training/runs", {"kind": "dpo", "config": {"epochs": 2, "beta": 0.2}}, format="json"
        )
    assert response.status_code == 201, response.json()
    run = TrainingRun.objects.get(id=response.json()["id"])
    assert run.status == "queued"
    assert run.requested_by == trainer
    assert run.config["epochs"] == 2.0
    assert run.config["beta"] == 0.2
    assert run.config["batch_size"] == 8  # a default, filled in
    assert run.base_version == live_models[0]
    assert run.reward_version == live_models[1]
    assert len(callbacks) == 1
    assert response.json()["base_version"] == live_models[0].label


def test_a_retried_post_with_the_same_idempotency_key_starts_one_run(trainer, live_models):
    client = client_for(trainer)
    body = {"kind": "reward", "config": {"epochs": 2}}
    first = client.post("/api/training/runs", body, format="json", headers={"Idempotency-Key": "start-1"})
    again = client.post("/api/training/runs", body, format="json", headers={"Idempotency-Key": "start-1"})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert TrainingRun.objects.count() == 1
    other = client.post("/api/training/runs", {"kind": "dpo"}, format="json", headers={"Idempotency-Key": "start-1"})
    assert other.status_code == 422
    assert TrainingRun.objects.count() == 1
    # Idempotency has its own lock: an operator's API call does not take (or create) their chat satisfaction row.
    assert not UserSatisfaction.objects.exists()


def test_it_refuses_bad_config_with_a_message_per_field_and_creates_nothing(trainer, live_models):
    response = client_for(trainer).post(
        "/api/training/runs",
        {"kind": "reward", "config": {"epochs": "two", "learning_rate": 5, "bogus": 1, "batch_size": 2.5}},
        format="json",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_config"
    assert error["fields"]["epochs"] == ["Must be a number, not str."]
    assert error["fields"]["learning_rate"] == ["Must be between 1e-09 and 1; got 5."]
    assert error["fields"]["batch_size"] == ["Must be a whole number."]
    assert error["fields"]["bogus"][0].startswith("Unknown setting.")
    assert not TrainingRun.objects.exists()


def test_it_refuses_ratings_that_overlap(trainer, live_models):
    response = client_for(trainer).post(
        "/api/training/runs", {"kind": "kto", "config": {"good_rating": 3, "bad_rating": 3}}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"bad_rating": ["Must be below good_rating (3); got 3."]}


def test_it_refuses_an_unknown_kind_and_unknown_fields(trainer, live_models):
    client = client_for(trainer)
    response = client.post("/api/training/runs", {"kind": "sft"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"kind": ['"sft" is not a valid choice.']}
    response = client.post("/api/training/runs", {"kind": "reward", "priority": 1}, format="json")
    assert response.json()["error"]["fields"] == {"priority": ["Unknown field."]}
    assert not TrainingRun.objects.exists()


def test_it_needs_a_live_policy(trainer):
    response = client_for(trainer).post("/api/training/runs", {"kind": "dpo"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "no_live_model"
    assert "bootstrap_models" in response.json()["error"]["message"]


def test_ppo_needs_a_live_reward_model(trainer):
    ModelVersionFactory(kind="policy", status="live", checksums={"a": "b"})
    response = client_for(trainer).post("/api/training/runs", {"kind": "ppo"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "no_live_reward"


def test_a_reward_run_starts_from_the_live_policy_when_no_reward_model_is_live(trainer):
    policy = ModelVersionFactory(kind="policy", status="live", checksums={"a": "b"})
    response = client_for(trainer).post("/api/training/runs", {"kind": "reward"}, format="json")
    assert response.status_code == 201
    assert TrainingRun.objects.get().base_version == policy


def test_users_without_the_permission_cannot_start_or_see_runs(alice, live_models):
    client = client_for(alice)
    assert client.post("/api/training/runs", {"kind": "reward"}, format="json").status_code == 403
    response = client.get("/api/training/runs")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert not TrainingRun.objects.exists()


def test_viewers_cannot_start_runs(live_models):
    viewer = UserFactory(username="viewer")
    viewer.user_permissions.add(Permission.objects.get(codename="view_trainingrun"))
    client = client_for(viewer)
    assert client.get("/api/training/runs").status_code == 200
    assert client.post("/api/training/runs", {"kind": "reward"}, format="json").status_code == 403
    assert not TrainingRun.objects.exists()


def test_it_lists_and_shows_runs(trainer, django_assert_max_num_queries):
    for _ in range(3):
        running_run(progress=0.5, step=5, total_steps=10)
    client = client_for(trainer)
    with django_assert_max_num_queries(6):
        body = client.get("/api/training/runs?status=running").json()
    assert body["count"] == 3
    run_id = body["results"][0]["id"]
    detail = client.get(f"/api/training/runs/{run_id}").json()
    assert detail["progress"] == 0.5
    assert detail["step"] == 5
    missing = client.get("/api/training/runs/999999")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_cancelling_a_queued_run_cancels_it_at_once(trainer):
    run = TrainingRun.objects.create(kind="reward")
    response = client_for(trainer).post(f"/api/training/runs/{run.id}/cancel")
    assert response.status_code == 200
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert run.finished_at is not None
    # A worker that gets the task afterwards does not claim it.
    assert services.training_run_claim(run_id=run.id, worker="w") is False


def test_cancelling_a_running_run_asks_its_worker_to_stop(trainer):
    run = running_run()
    response = client_for(trainer).post(f"/api/training/runs/{run.id}/cancel")
    assert response.status_code == 200
    run.refresh_from_db()
    assert run.status == "running"
    assert run.cancel_requested is True
    # The worker's next heartbeat says stop.
    assert services.training_run_heartbeat(run_id=run.id, progress=0.5) is False


def test_cancelling_a_finished_run_is_a_conflict(trainer):
    run = TrainingRun.objects.create(kind="reward", status="failed")
    response = client_for(trainer).post(f"/api/training/runs/{run.id}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["message"] == f"Training run {run.id} already failed; there is nothing to cancel."


# --- Services ----------------------------------------------------------------------------------
def test_only_one_delivery_claims_a_run():
    run = TrainingRun.objects.create(kind="reward")
    assert services.training_run_claim(run_id=run.id, worker="a", task_id="t1") is True
    assert services.training_run_claim(run_id=run.id, worker="b", task_id="t2") is False
    run.refresh_from_db()
    assert (run.status, run.worker, run.task_id) == ("running", "a", "t1")
    assert run.heartbeat_at is not None


def test_a_heartbeat_records_progress_and_clamps_it():
    run = running_run()
    assert services.training_run_heartbeat(run_id=run.id, progress=1.7, step=3, total_steps=9, metrics={"loss": 1})
    run.refresh_from_db()
    assert (run.progress, run.step, run.total_steps, run.metrics) == (1.0, 3, 9, {"loss": 1})


def test_the_reaper_fails_runs_whose_heartbeat_went_stale_and_nothing_else():
    stale = running_run(worker="host:123")
    TrainingRun.objects.filter(id=stale.id).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    fresh = running_run()
    queued = TrainingRun.objects.create(kind="reward")
    assert services.training_runs_reap(stale_after=timedelta(minutes=5)) == [stale.id]
    stale.refresh_from_db()
    assert stale.status == "failed"
    assert "host:123" in stale.error_message
    assert "stopped reporting for more than 300 s" in stale.error_message
    assert TrainingRun.objects.get(id=fresh.id).status == "running"
    assert TrainingRun.objects.get(id=queued.id).status == "queued"
    # The dead worker's late heartbeat does not bring the run back.
    assert services.training_run_heartbeat(run_id=stale.id, progress=0.9) is False
    assert TrainingRun.objects.get(id=stale.id).status == "failed"


def test_succeeding_registers_a_candidate_with_lineage(live_models, tmp_path):
    reward = live_models[1]
    run = running_run(base_version=reward)
    version = services.training_run_succeed(
        run_id=run.id, artifact_path=tmp_path, checksums={"f": "0"}, metrics={"eval": {"accuracy": 0.9}}, log_tail="ok"
    )
    assert version is not None
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert run.output_version == version
    assert version.status == ModelVersion.Status.CANDIDATE
    assert version.kind == "reward"
    assert version.parent == reward
    assert version.training_run == run
    assert version.metrics["eval"] == {"accuracy": 0.9}
    assert version.metrics["lineage"]["training_run"] == run.id
    assert ModelVersion.objects.get(kind="reward", status="live") == reward  # never live by itself


def test_a_run_cancelled_before_registration_registers_nothing(live_models, tmp_path):
    run = running_run(base_version=live_models[1])
    services.training_run_cancel(run_id=run.id)
    version = services.training_run_succeed(
        run_id=run.id, artifact_path=tmp_path, checksums={"f": "0"}, metrics={}, log_tail=""
    )
    assert version is None
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert ModelVersion.objects.count() == 2


def test_a_reaped_run_that_finishes_late_registers_nothing(live_models, tmp_path):
    run = running_run(base_version=live_models[1])
    services.training_run_fail(run_id=run.id, message="reaped")
    assert (
        services.training_run_succeed(
            run_id=run.id, artifact_path=tmp_path, checksums={"f": "0"}, metrics={}, log_tail=""
        )
        is None
    )
    assert TrainingRun.objects.get(id=run.id).status == "failed"
    assert ModelVersion.objects.count() == 2


def test_a_finished_run_cannot_be_failed_or_cancelled_again():
    run = TrainingRun.objects.create(kind="reward", status="cancelled")
    assert services.training_run_fail(run_id=run.id, message="late") is False
    with pytest.raises(RunConflict):
        services.training_run_cancel(run_id=run.id)
    assert TrainingRun.objects.get(id=run.id).status == "cancelled"


def test_the_database_refuses_a_succeeded_run_without_a_version():
    from django.db import IntegrityError

    with pytest.raises(IntegrityError):
        TrainingRun.objects.create(kind="reward", status="succeeded")


# --- The command's arguments -------------------------------------------------------------------
def test_train_parses_json_and_name_value_settings():
    assert parse_settings('{"epochs": 2}', ["learning_rate=1e-4", "seed=3"]) == {
        "epochs": 2,
        "learning_rate": 1e-4,
        "seed": 3,
    }
    with pytest.raises(CommandError, match="expected NAME=VALUE"):
        parse_settings(None, ["epochs"])
    with pytest.raises(CommandError, match="not valid JSON"):
        parse_settings("{", [])


def test_train_reports_bad_settings_field_by_field(live_models):
    with pytest.raises(CommandError) as info:
        call_command("train", "--kind", "reward", "--set", "epochs=many", "--set", "batch_size=0")
    assert "epochs: Must be a number, not str." in str(info.value)
    assert "batch_size: Must be between 1 and 4096; got 0." in str(info.value)
    assert not TrainingRun.objects.exists()


def test_train_without_a_live_model_says_what_to_do():
    with pytest.raises(CommandError, match="bootstrap_models"):
        call_command("train", "--kind", "dpo")


def test_the_service_error_carries_fields():
    with pytest.raises(TrainingError) as info:
        services.training_run_create(kind="reward", config=[1, 2])
    assert info.value.fields == {"config": ['Must be a JSON object of settings, e.g. {"epochs": 2}.']}


def test_train_wait_says_when_no_worker_takes_the_run(live_models, monkeypatch, capsys):
    """With no worker, --wait keeps waiting but says why; here the run is cancelled meanwhile, so it ends."""
    from training.management.commands import train as command

    monkeypatch.setattr(command, "QUEUED_HINT_SECONDS", 0)
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        services.training_run_cancel(run_id=TrainingRun.objects.get().id)

    monkeypatch.setattr(command.time, "sleep", sleep)
    with pytest.raises(CommandError, match=r"cancelled: Cancelled before it started\."):
        call_command("train", "--kind", "reward", "--wait")
    assert "is a worker consuming the training queue?" in capsys.readouterr().err
    assert polls == [1.0]


# --- The status machine ---------------------------------------------------------------------------


@pytest.mark.parametrize("start", TrainingRun.Status.values)
@pytest.mark.parametrize("to", [s for s in TrainingRun.Status.values if s != "queued"])
def test_every_status_change_follows_the_transition_table(db, start, to):
    # A succeeded run must name its version (a database constraint): give it one.
    output = {"output_version": ModelVersionFactory(kind="reward")} if start == "succeeded" else {}
    run = TrainingRun.objects.create(kind="reward", status=start, **output)
    allowed = to in TrainingRun.TRANSITIONS.get(start, frozenset())
    fields = {"output_version": ModelVersionFactory(kind="reward")} if to == "succeeded" and allowed else {}

    changed = services._transition(run.id, to, **fields)

    run.refresh_from_db()
    assert changed is allowed
    assert run.status == (to if allowed else start)
    assert (run.finished_at is not None) is (allowed and to in ("succeeded", "failed", "cancelled"))


def test_nothing_moves_a_run_back_to_queued(db):
    run = TrainingRun.objects.create(kind="reward", status="running")
    with pytest.raises(ValueError, match="No status may move to 'queued'"):
        services._transition(run.id, "queued")


def test_the_transition_table_cannot_be_changed_at_run_time():
    with pytest.raises(TypeError):
        TrainingRun.TRANSITIONS["succeeded"] = frozenset({"queued"})  # type: ignore[index]
    with pytest.raises(AttributeError):
        TrainingRun.TRANSITIONS["queued"].add("succeeded")  # type: ignore[attr-defined]


def test_the_services_refuse_what_the_table_refuses(db):
    done = TrainingRun.objects.create(kind="reward", status="failed", error_message="broken")
    assert services.training_run_claim(run_id=done.id, worker="w:1") is False
    assert services.training_run_mark_cancelled(run_id=done.id) is False
    assert services.training_run_fail(run_id=done.id, message="again") is False
    with pytest.raises(RunConflict):
        services.training_run_cancel(run_id=done.id)
    done.refresh_from_db()
    assert (done.status, done.error_message) == ("failed", "broken")


def test_a_reaper_whose_clock_runs_ahead_spares_a_run_beaten_just_now(monkeypatch):
    """The heartbeat and its age are on the database's clock: a beat worker whose clock is ten minutes
    ahead of the training worker's does not fail a live run."""
    run = TrainingRun.objects.create(kind="reward")
    assert services.training_run_claim(run_id=run.id, worker="host:1")
    assert services.training_run_heartbeat(run_id=run.id, progress=0.5)
    ahead = timezone.now() + timedelta(minutes=10)
    monkeypatch.setattr(timezone, "now", lambda: ahead)

    assert services.training_runs_reap(stale_after=timedelta(minutes=5)) == []
    run.refresh_from_db()
    assert run.status == "running"


def test_a_run_claimed_and_beaten_by_a_worker_whose_clock_runs_behind_stays_alive(monkeypatch):
    """Claimed and beaten by a worker ten minutes behind: both stamps are the database's time, so the
    run is not reaped before its next beat."""
    run = TrainingRun.objects.create(kind="dpo")
    behind = timezone.now() - timedelta(minutes=10)
    with monkeypatch.context() as patched:
        patched.setattr(timezone, "now", lambda: behind)
        assert services.training_run_claim(run_id=run.id, worker="host:1")
        run.refresh_from_db()
        claimed_at = run.heartbeat_at
        assert services.training_run_heartbeat(run_id=run.id, step=1)

    assert services.training_runs_reap(stale_after=timedelta(minutes=5)) == []
    run.refresh_from_db()
    assert run.status == "running"
    assert abs(claimed_at - timezone.now()) < timedelta(seconds=60)
    assert abs(run.heartbeat_at - timezone.now()) < timedelta(seconds=60)


def test_the_reaper_spares_a_run_whose_heartbeat_arrived_after_it_looked(db, monkeypatch):
    stale = TrainingRun.objects.create(
        kind="reward", status="running", heartbeat_at=timezone.now() - timedelta(minutes=30)
    )
    real_transition = services._transition

    def heartbeat_first(run_id, to, **kwargs):  # the worker beats between the reaper's read and write
        services.training_run_heartbeat(run_id=run_id)
        return real_transition(run_id, to, **kwargs)

    monkeypatch.setattr(services, "_transition", heartbeat_first)
    assert services.training_runs_reap() == []
    stale.refresh_from_db()
    assert stale.status == "running"


def test_the_execute_task_is_sent_by_a_name_celery_knows_and_routes_to_training(settings):
    from rlhf_site.celery import app

    app.loader.import_default_modules()
    assert services.EXECUTE_TASK in app.tasks
    assert settings.CELERY_TASK_ROUTES[services.EXECUTE_TASK] == {"queue": "training"}


# --- The broker unreachable when a run starts ---------------------------------------------------------
@pytest.fixture
def training_queue(settings):
    """The broker's ``training`` queue (Redis), empty before and after."""
    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete("training")
    yield client
    client.delete("training")


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_run_started_while_the_broker_is_away_is_queued_and_sent_once_it_is_back(
    trainer, live_models, broker_unreachable, training_queue, caplog
):
    response = client_for(trainer).post("/api/training/runs", {"kind": "dpo", "config": {}}, format="json")

    assert response.status_code == 201, response.content  # not a 500: the run is committed
    run = TrainingRun.objects.get(id=response.json()["id"])
    assert (run.status, run.task_id) == ("queued", "")
    assert f"training run {run.pk}: the broker is unreachable" in caplog.text
    TrainingRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=1))
    assert services.training_runs_resend() == []  # still away: it stays queued, unsent
    assert TrainingRun.objects.get(pk=run.pk).task_id == ""

    broker_unreachable()  # the broker is back
    fresh = TrainingRun.objects.create(kind="reward", config=run.config, base_version=live_models[0])
    assert services.training_runs_resend() == [run.pk]  # the fresh one may still be on its way
    run.refresh_from_db()
    assert run.status == "queued"
    assert run.task_id != ""
    assert training_queue.llen("training") == 1  # the message a training worker will take
    assert TrainingRun.objects.get(pk=fresh.pk).task_id == ""
    assert services.training_runs_resend() == []  # sent once


def test_the_runs_of_a_cycle_trained_in_its_own_process_are_never_sent(live_models):
    from training.models import Cycle

    here = TrainingRun.objects.create(kind="reward", config={}, base_version=live_models[0])
    Cycle.objects.create(policy_kind="dpo", reward_run=here, trained_by="manage.py rlhf_cycle --here")
    TrainingRun.objects.filter(pk=here.pk).update(created_at=timezone.now() - timedelta(minutes=5))

    assert services.training_runs_resend() == []
    assert TrainingRun.objects.get(pk=here.pk).task_id == ""
