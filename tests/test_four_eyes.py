"""Four-eyes (REGISTRY_FOUR_EYES): whoever requested a version may not approve it; whoever approved it
may not deploy it, start its canary or promote it. Stopping a canary and rolling back stay open to
any deployer (they restore what was there); the system (actor None) is exempt. The whole matrix,
through the services and through the API."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from models_registry.exceptions import NotPermitted
from models_registry.models import DeploymentEvent, ModelVersion
from models_registry.services import (
    canary_promote,
    canary_start,
    canary_stop,
    model_version_approve,
    model_version_deploy,
    model_version_make_live,
    model_version_register,
    model_version_rollback,
)
from tests.factories import ModelVersionFactory, UserFactory

pytestmark = pytest.mark.django_db
EVERYTHING = ["view_modelversion", "add_modelversion", "approve_modelversion", "deploy_modelversion"]


def user_with(name: str, codenames: list[str] = EVERYTHING):
    user = UserFactory(username=name)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="models_registry", codename__in=codenames)
    )
    return user


@pytest.fixture(autouse=True)
def _four_eyes(settings):
    settings.REGISTRY_FOUR_EYES = True


@pytest.fixture
def people():
    """requester asked for the version, approver approved it, other did neither (all hold every permission)."""
    return {name: user_with(name) for name in ("requester", "approver", "other")}


@pytest.fixture
def live():
    return model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))


def requested(people) -> ModelVersion:
    return model_version_register(
        kind="policy", artifact_path="/m/2", checksums={"a": "0" * 64}, requested_by=people["requester"]
    )


def approved(people) -> ModelVersion:
    return model_version_approve(version_id=requested(people).pk, actor=people["approver"])


def canary_of(people) -> ModelVersion:
    version = approved(people)
    canary_start(version_id=version.pk, share=0.2, actor=people["other"])
    return version


ACTIONS = {
    # name: (set up the version, do it as actor)
    "approve": (requested, lambda v, actor: model_version_approve(version_id=v.pk, actor=actor)),
    "deploy": (approved, lambda v, actor: model_version_deploy(version_id=v.pk, actor=actor)),
    "canary": (approved, lambda v, actor: canary_start(version_id=v.pk, share=0.2, actor=actor)),
    "promote": (canary_of, lambda v, actor: canary_promote(kind="policy", actor=actor)),
    "stop": (canary_of, lambda v, actor: canary_stop(kind="policy", actor=actor, reason="r")),
    "rollback": (None, lambda v, actor: model_version_rollback(kind="policy", actor=actor, reason="r")),
}
# Who may not: the rule, as a table.
REFUSED = {("approve", "requester"), ("deploy", "approver"), ("canary", "approver"), ("promote", "approver")}


@pytest.mark.parametrize("actor", ["requester", "approver", "other", "system"])
@pytest.mark.parametrize("action", list(ACTIONS))
def test_the_four_eyes_matrix(people, live, action, actor):
    setup, act = ACTIONS[action]
    if setup is None:  # rollback: the approver's version went live (by someone else), so there is a target
        version = approved(people)
        model_version_deploy(version_id=version.pk, actor=people["other"])
    else:
        version = setup(people)
    version.refresh_from_db()
    before_status, before_events = version.status, DeploymentEvent.objects.count()
    who = None if actor == "system" else people[actor]

    if (action, actor) in REFUSED:
        with pytest.raises(NotPermitted) as caught:
            act(version, who)
        assert caught.value.code == "four_eyes"
        assert "(four-eyes)" in caught.value.message
        version.refresh_from_db()
        assert version.status == before_status
        assert DeploymentEvent.objects.count() == before_events
    else:
        act(version, who)
        assert DeploymentEvent.objects.count() > before_events


def test_training_records_the_requester_who_then_may_not_approve(people):
    version = requested(people)
    assert version.requested_by == people["requester"]
    with pytest.raises(NotPermitted):
        model_version_approve(version_id=version.pk, actor=people["requester"])


def test_with_four_eyes_off_one_person_may_do_everything(people, live, settings):
    settings.REGISTRY_FOUR_EYES = False
    version = requested(people)
    model_version_approve(version_id=version.pk, actor=people["requester"])
    model_version_deploy(version_id=version.pk, actor=people["requester"])
    version.refresh_from_db()
    assert version.status == "live"


def test_the_api_answers_four_eyes_with_403_and_changes_nothing(people, live):
    version = approved(people)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=people['approver']).key}")

    response = client.post(f"/api/registry/versions/{version.pk}/deploy", {}, format="json")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "four_eyes"
    version.refresh_from_db()
    assert version.status == "approved"


def test_four_eyes_is_on_by_default_outside_debug(tmp_path):
    from tests.test_settings import clean_env, run_settings

    off = run_settings(clean_env(VAR_DIR=str(tmp_path)), "print(settings.REGISTRY_FOUR_EYES)")
    on_debug = run_settings(clean_env(VAR_DIR=str(tmp_path), DEBUG="1"), "print(settings.REGISTRY_FOUR_EYES)")
    assert (off.stdout.strip(), on_debug.stdout.strip()) == ("True", "False")


def test_whoever_requested_the_training_run_may_not_approve_its_output(people, live, tmp_path):
    from training import services as training_services
    from training.models import TrainingRun

    run = TrainingRun.objects.create(kind="dpo", status="running", base_version=live, requested_by=people["requester"])
    version = training_services.training_run_succeed(
        run_id=run.pk, artifact_path=tmp_path, checksums={"a": "0" * 64}, metrics={}, log_tail=""
    )

    assert version.requested_by == people["requester"]
    with pytest.raises(NotPermitted, match="requested policy:2 and may not also approve it"):
        model_version_approve(version_id=version.pk, actor=people["requester"])
    model_version_approve(version_id=version.pk, actor=people["approver"])
