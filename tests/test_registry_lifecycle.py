"""The model versions' status machine (approve, reject, deploy, roll back), its audit log, and the admin
that drives it."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.test import Client

from models_registry.exceptions import InvalidTransition, NothingToRollBackTo, NotPermitted, VersionNotFound
from models_registry.models import DeploymentEvent, ModelVersion
from models_registry.services import (
    model_version_approve,
    model_version_deploy,
    model_version_make_live,
    model_version_reject,
    model_version_retire,
    model_version_rollback,
)
from tests.factories import ModelVersionFactory, UserFactory

ADMIN = "/admin/models_registry/modelversion/"
EVENTS = "/admin/models_registry/deploymentevent/"


@pytest.fixture(autouse=True)
def _one_operator_may_approve_and_deploy(settings):
    """The status machine on its own: one operator approves and deploys (four-eyes has its own tests)."""
    settings.REGISTRY_FOUR_EYES = False


def events(version: ModelVersion) -> list[tuple[str, str, str | None, str]]:
    rows = DeploymentEvent.objects.filter(version=version).order_by("id").select_related("actor")
    return [(e.from_status, e.to_status, e.actor.username if e.actor else None, e.reason) for e in rows]


def approved(number: int, actor: Any, kind: str = "policy") -> ModelVersion:
    version = ModelVersionFactory(kind=kind, number=number)
    return model_version_approve(version_id=version.pk, actor=actor)


def staff_with(*codenames: str) -> Any:
    user = UserFactory(is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="models_registry", codename__in=codenames)
    )
    return user


# --- Transitions -------------------------------------------------------------------------------------


def test_it_approves_a_candidate_and_records_who_and_when(operator):
    version = ModelVersionFactory()

    result = model_version_approve(version_id=version.pk, actor=operator, reason="eval looks fine")

    version.refresh_from_db()
    assert (version.status, version.approved_by, result.approved_at) == ("approved", operator, version.approved_at)
    assert version.approved_at is not None
    assert events(version) == [("candidate", "approved", "operator", "eval looks fine")]


def test_it_rejects_a_candidate_for_good(operator):
    version = ModelVersionFactory(number=1)

    model_version_reject(version_id=version.pk, actor=operator, reason="toxic")

    version.refresh_from_db()
    assert version.status == "rejected"
    assert events(version) == [("candidate", "rejected", "operator", "toxic")]
    with pytest.raises(InvalidTransition) as caught:
        model_version_approve(version_id=version.pk, actor=operator)
    assert caught.value.message == "policy:1 cannot go from rejected to approved; rejected is final."


@pytest.mark.parametrize(
    ("status", "call", "message"),
    [
        (
            "candidate",
            "deploy",
            "policy:7 cannot go from candidate to live; from candidate it can go to approved, rejected.",
        ),
        (
            "approved",
            "approve",
            "policy:7 cannot go from approved to approved; from approved it can go to canary, live, rejected.",
        ),
        ("live", "approve", "policy:7 cannot go from live to approved; from live it can go to retired."),
        ("live", "reject", "policy:7 cannot go from live to rejected; from live it can go to retired."),
        ("live", "deploy", "policy:7 cannot go from live to live; from live it can go to retired."),
        (
            "retired",
            "approve",
            "policy:7 cannot go from retired to approved; from retired it can go to live, rejected.",
        ),
        (
            "candidate",
            "retire",
            "policy:7 cannot go from candidate to retired; from candidate it can go to approved, rejected.",
        ),
    ],
)
def test_it_refuses_a_transition_the_table_does_not_allow(operator, status, call, message):
    version = ModelVersionFactory(number=7, status=status)
    service = {
        "approve": model_version_approve,
        "reject": model_version_reject,
        "deploy": model_version_deploy,
        "retire": model_version_retire,
    }[call]

    with pytest.raises(InvalidTransition) as caught:
        service(version_id=version.pk, actor=operator)

    assert (caught.value.code, caught.value.http_status, caught.value.message) == ("invalid_transition", 409, message)
    version.refresh_from_db()
    assert version.status == status
    assert not DeploymentEvent.objects.exists()


def test_an_unknown_version_is_not_found(operator):
    with pytest.raises(VersionNotFound) as caught:
        model_version_approve(version_id=999, actor=operator)
    assert (caught.value.code, caught.value.http_status, caught.value.message) == (
        "not_found",
        404,
        "Model version 999 does not exist.",
    )


def test_deploy_retires_the_live_version_with_its_own_event(operator):
    old = approved(1, operator)
    model_version_deploy(version_id=old.pk, actor=operator, reason="first")
    new = approved(2, operator)
    reward = approved(1, operator, kind="reward")
    model_version_deploy(version_id=reward.pk, actor=operator)

    result = model_version_deploy(version_id=new.pk, actor=operator, reason="better win rate")

    old.refresh_from_db()
    reward.refresh_from_db()
    assert (old.status, result.status, reward.status) == ("retired", "live", "live")
    assert result.deployed_at is not None
    assert events(old) == [
        ("candidate", "approved", "operator", ""),
        ("approved", "live", "operator", "first"),
        ("live", "retired", "operator", "replaced by policy:2: better win rate"),
    ]
    assert events(new)[-1] == ("approved", "live", "operator", "better win rate")


def test_deploy_clears_the_last_load_error(operator):
    version = approved(1, operator)
    ModelVersion.objects.filter(pk=version.pk).update(load_error="boom")

    assert model_version_deploy(version_id=version.pk, actor=operator).load_error == ""


def test_retire_takes_the_live_version_down(operator):
    version = approved(1, operator)
    model_version_deploy(version_id=version.pk, actor=operator)

    model_version_retire(version_id=version.pk, actor=operator, reason="incident 42")

    version.refresh_from_db()
    assert version.status == "retired"
    assert not ModelVersion.objects.filter(status="live").exists()
    assert events(version)[-1] == ("live", "retired", "operator", "incident 42")


# --- Rollback ----------------------------------------------------------------------------------------


def test_rollback_makes_the_last_retired_version_live_again(operator):
    versions = [approved(n, operator) for n in (1, 2, 3)]
    for version in versions:
        model_version_deploy(version_id=version.pk, actor=operator)
    first, second, third = versions

    result = model_version_rollback(kind="policy", actor=operator, reason="satisfaction dropped")

    assert result.pk == second.pk
    for version in versions:
        version.refresh_from_db()
    assert (first.status, second.status, third.status) == ("retired", "live", "retired")
    assert events(second)[-1] == ("retired", "live", "operator", "satisfaction dropped")
    assert events(third)[-1] == ("live", "retired", "operator", "replaced by policy:2: satisfaction dropped")


def test_rollback_by_the_system_records_no_actor(operator):
    for n in (1, 2):
        model_version_deploy(version_id=approved(n, operator).pk, actor=operator)

    result = model_version_rollback(kind="policy", actor=None, reason="monitor: reward fell 12%")

    assert events(result)[-1] == ("retired", "live", None, "monitor: reward fell 12%")
    assert DeploymentEvent.objects.order_by("-id").first().actor_label == "system"


def test_rollback_skips_a_rejected_version(operator):
    versions = [approved(n, operator) for n in (1, 2, 3)]
    for version in versions:
        model_version_deploy(version_id=version.pk, actor=operator)
    model_version_reject(version_id=versions[1].pk, actor=operator, reason="bad after all")

    assert model_version_rollback(kind="policy", actor=operator, reason="r").pk == versions[0].pk


def test_rollback_refuses_when_nothing_was_retired(operator):
    model_version_deploy(version_id=approved(1, operator).pk, actor=operator)

    with pytest.raises(NothingToRollBackTo) as caught:
        model_version_rollback(kind="policy", actor=operator, reason="r")

    assert (caught.value.code, caught.value.http_status, caught.value.message) == (
        "no_rollback_target",
        409,
        "No retired policy version to roll back to.",
    )
    assert ModelVersion.objects.get().status == "live"


# --- Permissions and the one live version ------------------------------------------------------------


def test_a_user_without_the_permissions_changes_nothing(alice):
    version = ModelVersionFactory()

    with pytest.raises(NotPermitted) as caught:
        model_version_approve(version_id=version.pk, actor=alice)

    assert (caught.value.code, caught.value.http_status) == ("permission_denied", 403)
    assert caught.value.message == "alice may not do this: it needs the approve_modelversion permission."
    version.refresh_from_db()
    assert version.status == "candidate"
    assert not DeploymentEvent.objects.exists()


def test_an_approver_cannot_deploy(db):
    approver = staff_with("approve_modelversion")
    version = model_version_approve(version_id=ModelVersionFactory().pk, actor=approver)

    with pytest.raises(NotPermitted):
        model_version_deploy(version_id=version.pk, actor=approver)
    model_version_deploy(version_id=version.pk, actor=staff_with("deploy_modelversion"))


def test_deploys_from_stale_objects_leave_one_live_version(operator):
    first, second, third = (approved(n, operator) for n in (1, 2, 3))
    model_version_deploy(version_id=first.pk, actor=operator)
    stale = {v.pk: v for v in ModelVersion.objects.all()}  # read before the deploys below

    model_version_deploy(version_id=second.pk, actor=operator)
    model_version_make_live(version=stale[third.pk], actor=operator)
    with pytest.raises(InvalidTransition):
        model_version_deploy(version_id=stale[third.pk].pk, actor=operator)  # a double click

    assert list(ModelVersion.objects.filter(status="live").values_list("number", flat=True)) == [3]
    assert ModelVersion.objects.filter(status="retired").count() == 2
    assert DeploymentEvent.objects.filter(to_status="live").count() == 3
    assert DeploymentEvent.objects.filter(to_status="retired").count() == 2


def test_the_database_still_refuses_two_live_versions_of_a_kind(db):
    ModelVersionFactory(status="live")
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersionFactory(status="live")


# --- The direct path: the system making a version live ------------------------------------------------


def test_make_live_by_the_system_skips_approval_and_logs_it(db):
    version = ModelVersionFactory()

    model_version_make_live(version=version)
    model_version_make_live(version=version)  # already live: nothing happens

    assert events(version) == [("candidate", "live", None, "made live directly")]


def test_make_live_by_a_user_needs_an_approved_version(operator):
    version = ModelVersionFactory(number=4)

    with pytest.raises(InvalidTransition) as caught:
        model_version_make_live(version=version, actor=operator, reason="skip")

    assert caught.value.message == (
        "policy:4 cannot go from candidate to live; from candidate it can go to approved, rejected."
    )


def test_bootstrap_logs_both_models_going_live_as_the_system(db, settings, tmp_path, monkeypatch):
    from training.management.commands import bootstrap_models

    settings.VAR_DIR = tmp_path

    def train_models(policy_dir: Path, reward_dir: Path, *, seed: int, log: Any) -> dict[str, Any]:
        for folder in (policy_dir, reward_dir):
            folder.mkdir(parents=True)
            (folder / "config.json").write_text("{}")
        return {
            "seed": seed,
            "conversations": 1,
            "vocab_size": 8,
            "seconds": 1.0,
            "policy": {"params": 1},
            "reward": {"params": 1},
        }

    monkeypatch.setattr(bootstrap_models, "train_models", train_models)
    call_command("bootstrap_models", stdout=StringIO())
    call_command("bootstrap_models", "--force", stdout=StringIO())

    rows = DeploymentEvent.objects.order_by("id").select_related("version")
    assert [(e.version.label, e.from_status, e.to_status, e.actor_id) for e in rows] == [
        ("policy:1", "", "candidate", None),
        ("reward:1", "", "candidate", None),
        ("policy:1", "candidate", "live", None),
        ("reward:1", "candidate", "live", None),
        ("policy:2", "", "candidate", None),
        ("reward:2", "", "candidate", None),
        ("policy:1", "live", "retired", None),
        ("policy:2", "candidate", "live", None),
        ("reward:1", "live", "retired", None),
        ("reward:2", "candidate", "live", None),
    ]
    assert rows[0].reason == "bootstrap_models: trained from scratch"
    assert rows[2].reason == "bootstrap_models: first policy"
    assert rows[6].reason.startswith("replaced by policy:2")


def test_deployment_events_are_append_only(operator):
    version = model_version_approve(version_id=ModelVersionFactory().pk, actor=operator)
    event = DeploymentEvent.objects.get(version=version)

    event.reason = "rewritten"
    with pytest.raises(ValueError, match="append-only"):
        event.save()
    with pytest.raises(ValueError, match="append-only"):
        event.delete()
    assert DeploymentEvent.objects.get().reason == ""


# --- Admin -------------------------------------------------------------------------------------------


def action_names(client: Client) -> set[str]:
    response = client.get(ADMIN)
    assert response.status_code == 200
    form = response.context["action_form"]
    if form is None:
        return set()
    return {name for name, _ in form.fields["action"].choices if name}


def test_the_operator_gets_every_action_and_a_viewer_none(admin_client_, db):
    assert {"approve_versions", "reject_versions", "deploy_version", "rollback_kind"} <= action_names(admin_client_)
    viewer = Client()
    viewer.force_login(staff_with("view_modelversion"))
    assert action_names(viewer) & {"approve_versions", "reject_versions", "deploy_version", "rollback_kind"} == set()
    approver = Client()
    approver.force_login(staff_with("view_modelversion", "approve_modelversion"))
    assert action_names(approver) == {"approve_versions", "reject_versions"}


def test_a_staff_user_without_permission_cannot_use_the_actions_or_views(db):
    version = ModelVersionFactory(status="approved")
    client = Client()
    client.force_login(staff_with("view_modelversion"))

    response = client.post(ADMIN, {"action": "approve_versions", "_selected_action": [version.pk]})
    assert client.get(f"{ADMIN}{version.pk}/deploy/").status_code == 403
    assert client.post(f"{ADMIN}{version.pk}/deploy/", {"reason": "x"}).status_code == 403
    assert client.post(f"{ADMIN}rollback/policy/", {"reason": "x"}).status_code == 403

    assert response.status_code in (200, 302)
    version.refresh_from_db()
    assert version.status == "approved"
    assert not DeploymentEvent.objects.exists()


def test_the_admin_approves_and_rejects_in_bulk(admin_client_, operator):
    first, second = ModelVersionFactory(number=1), ModelVersionFactory(number=2, status="rejected")

    response = admin_client_.post(
        ADMIN, {"action": "approve_versions", "_selected_action": [first.pk, second.pk]}, follow=True
    )

    texts = [str(m) for m in response.context["messages"]]
    assert texts == [
        "Approved policy:1.",
        "policy:2 cannot go from rejected to approved; rejected is final.",
    ]
    first.refresh_from_db()
    assert (first.status, first.approved_by) == ("approved", operator)


def test_the_deploy_action_asks_for_confirmation_then_deploys(admin_client_, operator):
    live = approved(1, operator)
    model_version_deploy(version_id=live.pk, actor=operator)
    version = approved(2, operator)

    response = admin_client_.post(ADMIN, {"action": "deploy_version", "_selected_action": [version.pk]})
    assert response.status_code == 302
    assert response["Location"] == f"{ADMIN}{version.pk}/deploy/"
    page = admin_client_.get(response["Location"]).content.decode()
    assert "policy:2 (approved) becomes the live policy version." in page
    assert "policy:1 is live now and will be retired." in page
    version.refresh_from_db()
    assert version.status == "approved", "nothing changes before the confirmation"

    done = admin_client_.post(f"{ADMIN}{version.pk}/deploy/", {"reason": "wins 60%"}, follow=True)

    assert [str(m) for m in done.context["messages"]] == ["policy:2 is live."]
    version.refresh_from_db()
    assert version.status == "live"
    assert events(version)[-1] == ("approved", "live", "operator", "wins 60%")


def test_deploying_a_candidate_in_the_admin_says_why_not(admin_client_):
    version = ModelVersionFactory(number=5)

    response = admin_client_.post(f"{ADMIN}{version.pk}/deploy/", {"reason": ""}, follow=True)

    assert [str(m) for m in response.context["messages"]] == [
        "policy:5 cannot go from candidate to live; from candidate it can go to approved, rejected."
    ]
    version.refresh_from_db()
    assert version.status == "candidate"


def test_rollback_in_the_admin_needs_a_reason(admin_client_, operator):
    for n in (1, 2):
        model_version_deploy(version_id=approved(n, operator).pk, actor=operator)

    page = admin_client_.get(f"{ADMIN}rollback/policy/").content.decode()
    assert "policy:1 (retired) becomes the live policy version." in page
    assert "policy:2 is live now and will be retired." in page
    refused = admin_client_.post(f"{ADMIN}rollback/policy/", {"reason": ""})
    assert refused.status_code == 200
    assert "This field is required." in refused.content.decode()
    assert ModelVersion.objects.get(status="live").number == 2

    done = admin_client_.post(f"{ADMIN}rollback/policy/", {"reason": "complaints"}, follow=True)

    assert [str(m) for m in done.context["messages"]] == ["Rolled back: policy:1 is live again."]
    assert ModelVersion.objects.get(status="live").number == 1


def test_rollback_in_the_admin_with_nothing_retired(admin_client_):
    page = admin_client_.get(f"{ADMIN}rollback/reward/").content.decode()
    assert "No retired reward version to roll back to." in page
    response = admin_client_.post(f"{ADMIN}rollback/reward/", {"reason": "x"}, follow=True)
    assert [str(m) for m in response.context["messages"]] == ["No retired reward version to roll back to."]


def test_the_status_is_read_only_on_the_version_page(admin_client_):
    version = ModelVersionFactory()
    page = admin_client_.get(f"{ADMIN}{version.pk}/change/").content.decode()
    assert 'name="status"' not in page


def test_a_version_page_shows_its_deployment_log(admin_client_, operator):
    version = approved(1, operator)
    model_version_deploy(version_id=version.pk, actor=operator, reason="ship it")

    page = admin_client_.get(f"{ADMIN}{version.pk}/change/").content.decode()

    assert "Deployment log" in page
    assert "ship it" in page
    assert 'name="events-0-reason"' not in page, "read-only"


def test_deployment_events_cannot_be_added_changed_or_deleted_in_the_admin(admin_client_, operator):
    version = model_version_approve(version_id=ModelVersionFactory().pk, actor=operator, reason="ok")
    event = DeploymentEvent.objects.get()

    assert admin_client_.get(EVENTS).status_code == 200
    assert admin_client_.get(f"{EVENTS}{event.pk}/change/").status_code == 200
    assert admin_client_.post(f"{EVENTS}{event.pk}/change/", {"reason": "edited"}).status_code == 403
    assert admin_client_.post(f"{EVENTS}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert admin_client_.get(f"{EVENTS}add/").status_code == 403
    event.refresh_from_db()
    assert (event.reason, event.version) == ("ok", version)


def test_the_deployment_log_lists_without_n_plus_one(admin_client_, operator, django_assert_max_num_queries):
    for n in range(1, 6):
        model_version_deploy(version_id=approved(n, operator).pk, actor=operator)
    with django_assert_max_num_queries(10):
        response = admin_client_.get(EVENTS)
    assert response.status_code == 200
    assert response.context["cl"].result_count == 14


def test_versions_cannot_be_deleted_in_the_admin(operator):
    version = ModelVersionFactory()
    client = Client()
    client.force_login(operator)
    response = client.post(f"/admin/models_registry/modelversion/{version.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert ModelVersion.objects.filter(pk=version.pk).exists()
    page = client.get("/admin/models_registry/modelversion/").content.decode()
    assert "Delete selected" not in page
