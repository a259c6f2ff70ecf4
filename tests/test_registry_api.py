"""The registry REST API: a CI pipeline approves and deploys with tokens alone; canaries, rollbacks and
registrations; reads with analytics, decisions and events; permissions, errors and Idempotency-Key."""

from __future__ import annotations

import time

import jwt
import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from models_registry.models import Canary, DeploymentEvent, ModelVersion
from models_registry.services import model_version_make_live
from tests.factories import ModelVersionFactory, UserFactory
from tests.monitoring_data import rate
from training.monitor.service import monitor_pass

pytestmark = pytest.mark.django_db
API = "/api/registry"


def client_with(*codenames: str, username: str | None = None) -> tuple[APIClient, object]:
    user = UserFactory(**({"username": username} if username else {}))
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="models_registry", codename__in=codenames)
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client, user


@pytest.fixture
def approver():
    return client_with("view_modelversion", "approve_modelversion", username="approver")


@pytest.fixture
def deployer():
    return client_with("view_modelversion", "deploy_modelversion", username="deployer")


@pytest.fixture
def live():
    return model_version_make_live(version=ModelVersionFactory(number=1, checksums={"a": "0" * 64}))


def post(client: APIClient, path: str, body: dict | None = None, **headers: str):
    return client.post(f"{API}{path}", body or {}, format="json", headers=headers)


def test_a_ci_pipeline_approves_and_deploys_with_tokens_alone(approver, deployer, live):
    candidate = ModelVersionFactory(number=2)
    (approve_client, _), (deploy_client, _) = approver, deployer

    approved = post(approve_client, f"/versions/{candidate.pk}/approve", {"reason": "eval passed"})
    deployed = post(deploy_client, f"/versions/{candidate.pk}/deploy", {"reason": "ship it"})

    assert approved.status_code == 200
    assert (approved.json()["status"], approved.json()["approved_by"]) == ("approved", "approver")
    assert deployed.status_code == 200
    body = deployed.json()
    assert (body["label"], body["status"]) == ("policy:2", "live")
    assert [(e["from_status"], e["to_status"], e["actor"], e["reason"]) for e in body["events"]] == [
        ("candidate", "approved", "approver", "eval passed"),
        ("approved", "live", "deployer", "ship it"),
    ]
    live.refresh_from_db()
    assert live.status == "retired"


def test_reads_list_filter_and_show_analytics_decisions_and_events(
    deployer, live, settings, django_assert_max_num_queries
):
    settings.REGISTRY_FOUR_EYES = False
    client, _ = deployer
    candidate = ModelVersionFactory(number=2, status="approved")
    post(client, f"/versions/{candidate.pk}/canary", {"share": 0.25})
    rate(candidate, 30, 0.5)
    monitor_pass()

    with django_assert_max_num_queries(6):
        listing = client.get(f"{API}/versions", {"kind": "policy", "status": "canary"})
    detail = client.get(f"{API}/versions/{candidate.pk}").json()

    assert [v["label"] for v in listing.json()["results"]] == ["policy:2"]
    assert detail["sections"]["analytics"]["total"]["served"] == 30
    assert detail["sections"]["analytics"]["total"]["positive"]["value"] == 0.5
    assert detail["sections"]["monitor_decisions"][0]["decision"] == "not_enough_data"
    assert detail["canaries"][0]["share"] == 0.25
    assert detail["events"][-1]["to_status"] == "canary"
    events = client.get(f"{API}/events", {"version": candidate.pk}).json()["results"]
    assert [e["to_status"] for e in events] == ["canary"]
    assert client.get(f"{API}/canaries").json()["results"][0]["version"] == "policy:2"
    bad = client.get(f"{API}/versions", {"status": "bogus"})
    assert (bad.status_code, bad.json()["error"]["fields"]["status"][0]) == (
        400,
        "Must be one of " + ", ".join(ModelVersion.Status.values) + ".",
    )


def test_canary_start_stop_and_promote_through_the_api(deployer, live, settings):
    settings.REGISTRY_FOUR_EYES = False
    client, _ = deployer
    first, second = ModelVersionFactory(number=2, status="approved"), ModelVersionFactory(number=3, status="approved")

    assert post(client, f"/versions/{first.pk}/canary", {"share": 0.1}).json()["status"] == "canary"
    stopped = post(client, "/kinds/policy/canary/stop", {"reason": "complaints"})
    assert (stopped.status_code, stopped.json()["status"]) == (200, "approved")
    assert post(client, f"/versions/{second.pk}/canary", {"share": 0.5}).status_code == 200
    promoted = post(client, "/kinds/policy/canary/promote", {})

    assert (promoted.json()["label"], promoted.json()["status"]) == ("policy:3", "live")
    assert list(Canary.objects.order_by("id").values_list("outcome", flat=True)) == ["stopped", "promoted"]


def test_rollback_through_the_api_needs_a_reason(deployer, live, settings):
    settings.REGISTRY_FOUR_EYES = False
    client, user = deployer
    post(client, f"/versions/{ModelVersionFactory(number=2, status='approved').pk}/deploy")

    refused = post(client, "/kinds/policy/rollback", {})
    done = post(client, "/kinds/policy/rollback", {"reason": "worse answers"})

    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "required")
    assert (done.status_code, done.json()["label"], done.json()["status"]) == (200, "policy:1", "live")
    assert DeploymentEvent.objects.filter(version=live, to_status="live", actor=user, reason="worse answers").exists()


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/versions/999/deploy", {}, 404, "not_found"),
        ("/versions/{candidate}/deploy", {}, 409, "invalid_transition"),
        ("/versions/{candidate}/canary", {"share": 1.5}, 400, "invalid"),
        ("/versions/{candidate}/canary", {"share": 0.1, "typo": 1}, 400, "invalid"),
        ("/kinds/critic/rollback", {"reason": "x"}, 400, "unknown_kind"),
        ("/kinds/policy/canary/stop", {"reason": "x"}, 409, "no_canary"),
    ],
)
def test_bad_requests_get_the_one_error_shape_and_change_nothing(deployer, live, path, body, status, code):
    client, _ = deployer
    candidate = ModelVersionFactory(number=2)
    response = post(client, path.format(candidate=candidate.pk), body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    candidate.refresh_from_db()
    assert candidate.status == "candidate"
    assert not DeploymentEvent.objects.filter(version=candidate).exists()


def test_an_action_without_its_permission_is_refused(live):
    client, _ = client_with("view_modelversion")
    candidate = ModelVersionFactory(number=2)
    response = post(client, f"/versions/{candidate.pk}/approve")
    assert (response.status_code, response.json()["error"]["code"]) == (403, "permission_denied")
    candidate.refresh_from_db()
    assert candidate.status == "candidate"


def test_reads_need_the_view_permission_and_anonymous_is_401(db):
    client, _ = client_with()
    assert client.get(f"{API}/versions").status_code == 403
    assert APIClient().get(f"{API}/versions").status_code == 401
    assert client.get(f"{API}/versions", {"status": "bogus"}).status_code == 403


def test_a_retried_deploy_with_the_same_key_deploys_once(deployer, live, settings):
    settings.REGISTRY_FOUR_EYES = False
    client, _ = deployer
    candidate = ModelVersionFactory(number=2, status="approved")

    first = post(client, f"/versions/{candidate.pk}/deploy", {"reason": "go"}, **{"Idempotency-Key": "deploy-2"})
    again = post(client, f"/versions/{candidate.pk}/deploy", {"reason": "go"}, **{"Idempotency-Key": "deploy-2"})
    other = post(client, f"/versions/{candidate.pk}/deploy", {"reason": "no"}, **{"Idempotency-Key": "deploy-2"})

    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert other.status_code == 422
    assert DeploymentEvent.objects.filter(version=candidate, to_status="live").count() == 1


def test_an_external_server_is_registered_through_the_api_with_its_event(settings):
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["vllm.internal"]
    client, _ = client_with("view_modelversion", "add_modelversion", username="registrar")

    refused = post(client, "/versions", {"base_url": "http://evil.example/v1", "model_name": "m"})
    created = post(client, "/versions", {"base_url": "http://vllm.internal/v1", "model_name": "llama", "reason": "GPU"})

    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "host_not_allowed")
    assert created.status_code == 201
    assert (created.json()["label"], created.json()["status"], created.json()["backend"]) == (
        "policy:1",
        "candidate",
        "openai",
    )
    assert created.json()["events"] == [
        {
            **created.json()["events"][0],
            "from_status": "",
            "to_status": "candidate",
            "actor": "registrar",
            "reason": "GPU",
        }
    ]
    assert ModelVersion.objects.count() == 1


def test_a_supabase_jwt_user_with_the_permissions_can_deploy(db, settings, live):
    settings.SUPABASE_JWT_SECRET = "jwt-secret-with-at-least-32-characters!!"
    settings.REGISTRY_FOUR_EYES = False
    now = int(time.time())
    token = jwt.encode(
        {"sub": "ci-bot", "aud": "authenticated", "iat": now, "exp": now + 600},
        settings.SUPABASE_JWT_SECRET,
        algorithm="HS256",
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get(f"{API}/versions").status_code == 403  # signed in, but no permission yet
    bot = UserFactory._meta.model.objects.get(username="supabase-ci-bot")
    bot.user_permissions.set(Permission.objects.filter(codename__in=["view_modelversion", "deploy_modelversion"]))
    candidate = ModelVersionFactory(number=2, status="approved")

    response = client.post(f"{API}/versions/{candidate.pk}/deploy", {}, format="json")

    assert (response.status_code, response.json()["status"]) == (200, "live")
