from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client

from tests.factories import ModelVersionFactory, UserFactory
from training.models import DatasetSnapshot, TrainingRun

Status = TrainingRun.Status
RUNS = "/admin/training/trainingrun/"


@pytest.fixture
def viewer_client(db) -> Client:
    """A staff user who may look at runs but not start or cancel them."""
    viewer = UserFactory(username="viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_trainingrun", content_type__app_label="training"))
    client = Client()
    client.force_login(viewer)
    return client


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _run(**fields) -> TrainingRun:
    return TrainingRun.objects.create(**{"kind": "dpo", **fields})


# Starting a run


def test_the_start_form_queues_a_run_with_the_parsed_config(
    admin_client_, operator, live_models, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client_.post(f"{RUNS}start/", {"kind": "dpo", "config": '{"epochs": 2, "beta": 0.2}'})
    run = TrainingRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"{RUNS}{run.pk}/change/"
    assert (run.kind, run.status, run.requested_by) == ("dpo", Status.QUEUED, operator)
    assert run.config["epochs"] == 2.0
    assert run.config["beta"] == 0.2
    assert run.base_version == live_models[0]
    assert len(callbacks) == 1  # the task is sent on commit, not here
    assert _messages(response) == [f"Queued DPO (policy) run {run.pk}; a worker will pick it up."]


def test_the_start_form_shows_the_defaults_per_kind(admin_client_):
    response = admin_client_.get(f"{RUNS}start/")
    assert response.status_code == 200
    assert response.context["form"]["config"].value() == "{}"
    assert b"learning_rate" in response.content
    assert b"PPO (policy)" in response.content


def test_the_start_form_shows_config_errors_per_setting_and_creates_nothing(admin_client_, live_models):
    response = admin_client_.post(f"{RUNS}start/", {"kind": "dpo", "config": '{"epochs": -1, "colour": 3}'})
    assert response.status_code == 200
    errors = response.context["form"].errors["config"]
    assert "epochs: Must be between 0.01 and 1000; got -1." in errors
    assert any(e.startswith("colour: Unknown setting.") for e in errors)
    assert response.context["form"].non_field_errors() == ["2 config fields are invalid."]
    assert not TrainingRun.objects.exists()


def test_the_start_form_refuses_a_config_that_is_not_an_object(admin_client_, live_models):
    response = admin_client_.post(f"{RUNS}start/", {"kind": "reward", "config": "[1, 2]"})
    assert response.context["form"].errors["config"] == ['Must be a JSON object of settings, e.g. {"epochs": 2}.']
    assert not TrainingRun.objects.exists()


def test_the_start_form_refuses_invalid_json(admin_client_, live_models):
    response = admin_client_.post(f"{RUNS}start/", {"kind": "dpo", "config": '{"epochs": 2,}'})
    assert response.status_code == 200
    assert response.context["form"].errors["config"][0].startswith("The config is not valid JSON: ")
    assert not TrainingRun.objects.exists()


def test_the_start_form_explains_a_missing_live_model(admin_client_, db):
    ModelVersionFactory(kind="policy", status="live", checksums={"x": "y"})
    response = admin_client_.post(f"{RUNS}start/", {"kind": "ppo", "config": "{}"})
    assert response.context["form"].non_field_errors() == ["PPO needs a live reward model; train and deploy one first."]
    assert not TrainingRun.objects.exists()


def test_the_changelist_offers_start_only_with_the_permission(admin_client_, viewer_client):
    assert b"Start training run" in admin_client_.get(RUNS).content
    page = viewer_client.get(RUNS)
    assert page.status_code == 200
    assert b"Start training run" not in page.content


# Permissions


def test_a_staff_user_without_the_permission_can_neither_start_nor_cancel(viewer_client, live_models):
    run = _run(status=Status.QUEUED)
    assert viewer_client.get(f"{RUNS}start/").status_code == 403
    assert viewer_client.post(f"{RUNS}start/", {"kind": "dpo", "config": "{}"}).status_code == 403
    assert viewer_client.post(f"{RUNS}{run.pk}/cancel/").status_code == 403
    page = viewer_client.get(f"{RUNS}{run.pk}/change/")
    assert page.status_code == 200
    assert b"Cancel run" not in page.content
    run.refresh_from_db()
    assert run.status == Status.QUEUED
    assert TrainingRun.objects.count() == 1


def test_the_cancel_action_needs_the_permission(admin_client_, viewer_client):
    _run(status=Status.QUEUED)
    assert b"Cancel selected runs" in admin_client_.get(RUNS).content
    assert b"Cancel selected runs" not in viewer_client.get(RUNS).content


def test_runs_are_read_only(admin_client_):
    run = _run(status=Status.QUEUED)
    assert admin_client_.get(f"{RUNS}add/").status_code == 403
    assert admin_client_.post(f"{RUNS}{run.pk}/change/", {"status": "failed"}).status_code == 403
    assert admin_client_.post(f"{RUNS}{run.pk}/delete/", {"post": "yes"}).status_code == 403
    run.refresh_from_db()
    assert run.status == Status.QUEUED


# Cancelling


def test_cancelling_a_queued_run_cancels_it(admin_client_):
    run = _run(status=Status.QUEUED)
    response = admin_client_.post(f"{RUNS}{run.pk}/cancel/")
    assert response.status_code == 302
    assert response["Location"] == f"{RUNS}{run.pk}/change/"
    run.refresh_from_db()
    assert (run.status, run.cancel_requested) == (Status.CANCELLED, True)
    assert _messages(response) == [f"Cancelled dpo run {run.pk}."]


def test_cancelling_a_running_run_asks_its_worker_to_stop(admin_client_):
    run = _run(status=Status.RUNNING, progress=0.3)
    page = admin_client_.get(f"{RUNS}{run.pk}/change/")
    assert f'action="{RUNS}{run.pk}/cancel/"'.encode() in page.content
    assert b"csrfmiddlewaretoken" in page.content
    response = admin_client_.post(f"{RUNS}{run.pk}/cancel/")
    run.refresh_from_db()
    assert (run.status, run.cancel_requested) == (Status.RUNNING, True)
    assert _messages(response) == [f"Asked dpo run {run.pk} to stop; its worker stops at the next step."]
    assert b"Cancel run" not in admin_client_.get(f"{RUNS}{run.pk}/change/").content


def test_cancelling_a_finished_run_shows_why_not(admin_client_):
    run = _run(status=Status.FAILED, error_message="out of memory")
    response = admin_client_.post(f"{RUNS}{run.pk}/cancel/")
    assert response.status_code == 302
    assert _messages(response) == [f"Training run {run.pk} already failed; there is nothing to cancel."]
    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert b"Cancel run" not in admin_client_.get(f"{RUNS}{run.pk}/change/").content


def test_the_cancel_page_asks_before_cancelling(admin_client_):
    run = _run(status=Status.QUEUED)
    response = admin_client_.get(f"{RUNS}{run.pk}/cancel/")
    assert response.status_code == 200
    assert b"Yes, cancel the run" in response.content
    run.refresh_from_db()
    assert run.status == Status.QUEUED


def test_the_cancel_action_cancels_active_runs_and_reports_finished_ones(admin_client_):
    queued, running = _run(status=Status.QUEUED), _run(status=Status.RUNNING)
    failed = _run(status=Status.FAILED)
    response = admin_client_.post(
        RUNS, {"action": "cancel_runs", "_selected_action": [queued.pk, running.pk, failed.pk]}
    )
    assert response.status_code == 302
    queued.refresh_from_db(), running.refresh_from_db(), failed.refresh_from_db()
    assert queued.status == Status.CANCELLED
    assert (running.status, running.cancel_requested) == (Status.RUNNING, True)
    assert failed.status == Status.FAILED
    assert _messages(response) == [
        f"Training run {failed.pk} already failed; there is nothing to cancel.",
        "Cancelled 1 queued run(s); asked 1 running run(s) to stop.",
    ]


# The list and live progress


def test_the_changelist_shows_progress_and_metrics_within_a_query_budget(
    admin_client_, alice, django_assert_max_num_queries
):
    running = _run(
        status=Status.RUNNING,
        progress=0.42,
        step=42,
        total_steps=100,
        phase="training",
        metrics={"train": {"train_loss": 0.6931, "loss": 0.7}, "eval": {"accuracy": 0.75, "pairs": 20}},
        requested_by=alice,
    )
    for _n in range(8):
        version = ModelVersionFactory(kind="policy")
        _run(status=Status.SUCCEEDED, progress=1.0, output_version=version, requested_by=alice, kind="kto")
        _run(status=Status.QUEUED, requested_by=alice, kind="reward")
    with django_assert_max_num_queries(12):
        response = admin_client_.get(RUNS)
    assert response.status_code == 200
    html = response.content.decode()
    assert '<progress max="100" value="42"' in html
    assert "42%" in html
    assert "step 42/100" in html
    assert "loss 0.6931, eval acc 0.75" in html
    assert f'hx-get="{RUNS}{running.pk}/progress/"' in html
    assert 'hx-trigger="every 2s"' in html
    assert "django_htmx/htmx-2.min.js" in html  # the script that does the polling


def test_the_changelist_filters_by_kind_and_status(admin_client_):
    _run(kind="reward", status=Status.QUEUED)
    _run(kind="dpo", status=Status.FAILED)
    assert admin_client_.get(RUNS, {"kind__exact": "reward"}).context["cl"].result_count == 1
    assert admin_client_.get(RUNS, {"status__exact": "failed"}).context["cl"].result_count == 1


def test_the_progress_fragment_polls_while_the_run_is_active(admin_client_):
    run = _run(status=Status.RUNNING, progress=0.5, step=5, total_steps=10)
    response = admin_client_.get(f"{RUNS}{run.pk}/progress/")
    assert response.status_code == 200
    assert b'hx-trigger="every 2s"' in response.content
    assert b"50%" in response.content
    assert "HX-Refresh" not in response

    TrainingRun.objects.filter(pk=run.pk).update(status=Status.FAILED, progress=0.6)
    response = admin_client_.get(f"{RUNS}{run.pk}/progress/")
    assert b"hx-get" not in response.content
    assert b"hx-trigger" not in response.content
    assert b"60%" in response.content
    assert b"Failed" in response.content
    detail = admin_client_.get(f"{RUNS}{run.pk}/progress/", {"detail": "1"})
    assert detail["HX-Refresh"] == "true"  # the detail page reloads once to show the final state


def test_the_progress_fragment_needs_view_permission(db):
    run = _run(status=Status.RUNNING)
    client = Client()
    client.force_login(UserFactory(username="staffer", is_staff=True))
    assert client.get(f"{RUNS}{run.pk}/progress/").status_code == 403
    assert Client().get(f"{RUNS}{run.pk}/progress/").status_code == 302  # to the login page


def test_the_detail_page_shows_the_log_tail_metrics_and_lineage(admin_client_):
    dataset = DatasetSnapshot.objects.create(path="/tmp/ds", content_hash="a" * 64)
    version = ModelVersionFactory(kind="policy")
    run = _run(
        status=Status.SUCCEEDED,
        progress=1.0,
        output_version=version,
        dataset=dataset,
        metrics={"train": {"train_loss": 0.5}, "eval": {"win_rate": 0.8, "kl": 0.01}},
        log_tail="step 1/2 loss 0.7\nstep 2/2 loss <0.5>",
    )
    response = admin_client_.get(f"{RUNS}{run.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "step 1/2 loss 0.7\nstep 2/2 loss &lt;0.5&gt;</pre>" in html
    assert "loss 0.5 &middot; win rate 0.8 &middot; kl 0.01" in html
    assert json.dumps(run.metrics, indent=2, sort_keys=True).replace('"', "&quot;") in html
    assert f'href="/admin/training/datasetsnapshot/{dataset.pk}/change/"' in html
    assert f'href="/admin/models_registry/modelversion/{version.pk}/change/"' in html
    assert b"hx-get" not in response.content
    assert b'name="kind"' not in response.content


def test_the_detail_page_of_an_active_run_polls_and_offers_cancel(admin_client_):
    run = _run(status=Status.QUEUED)
    html = admin_client_.get(f"{RUNS}{run.pk}/change/").content.decode()
    assert f'hx-get="{RUNS}{run.pk}/progress/?detail=1"' in html
    assert "Cancel run" in html


# Snapshots and lineage on model versions


def test_the_snapshot_admin_lists_snapshots_read_only(admin_client_):
    snapshot = DatasetSnapshot.objects.create(
        path="/tmp/ds",
        content_hash="0123456789abcdef" * 4,
        row_counts={"preference": {"train": 90, "test": 10}, "prompts": {"train": 40, "test": 5}},
        stats={"dropped_ties": 3},
        size_bytes=2048,
    )
    page = admin_client_.get("/admin/training/datasetsnapshot/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "0123456789ab" in html
    assert "preference 90/10, prompts 40/5" in html
    assert "2.0\xa0KB" in html
    detail = admin_client_.get(f"/admin/training/datasetsnapshot/{snapshot.pk}/change/")
    assert "&quot;dropped_ties&quot;: 3" in detail.content.decode()
    assert admin_client_.get("/admin/training/datasetsnapshot/add/").status_code == 403
    assert (
        admin_client_.post(f"/admin/training/datasetsnapshot/{snapshot.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    assert DatasetSnapshot.objects.filter(pk=snapshot.pk).exists()


def test_a_model_version_links_to_the_run_that_trained_it(admin_client_):
    dataset = DatasetSnapshot.objects.create(path="/tmp/ds", content_hash="f" * 64)
    version = ModelVersionFactory(kind="reward")
    run = _run(kind="reward", status=Status.SUCCEEDED, progress=1.0, output_version=version, dataset=dataset)
    ModelVersionFactory(kind="policy")  # no run
    listing = admin_client_.get("/admin/models_registry/modelversion/").content.decode()
    assert f'href="{RUNS}{run.pk}/change/"' in listing
    detail = admin_client_.get(f"/admin/models_registry/modelversion/{version.pk}/change/").content.decode()
    assert f'href="{RUNS}{run.pk}/change/"' in detail
    assert "ffffffffffff" in detail
