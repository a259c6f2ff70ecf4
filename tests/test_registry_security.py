"""The registry's audit cannot be bypassed: versions come only from ``model_version_register`` (with a
registration event), the admin neither adds nor edits them, and OpenAI-compatible servers must be on
``SERVING_OPENAI_ALLOWED_HOSTS``."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client

from models_registry.endpoints import base_url_problem
from models_registry.exceptions import NotPermitted, RegistryError
from models_registry.models import DeploymentEvent, ModelVersion
from models_registry.services import model_version_register
from tests.factories import ModelVersionFactory, UserFactory

ADMIN = "/admin/models_registry/modelversion/"


def staff_with(*codenames: str) -> Client:
    user = UserFactory(is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="models_registry", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


def change_form(version: ModelVersion, **overrides: str) -> dict[str, str]:
    """What the admin's change form posted before it was made read-only: every field of the version."""
    data = {
        "kind": version.kind,
        "number": str(version.number),
        "artifact_path": version.artifact_path,
        "checksums": "{}",
        "backend": version.backend,
        "base_url": version.base_url,
        "model_name": version.model_name,
        "metrics": "{}",
        "parent": "",
        "status": version.status,
        "load_error": "",
        "_save": "Save",
        # The deployment log inline's management form.
        "events-TOTAL_FORMS": "0",
        "events-INITIAL_FORMS": "0",
        "events-MIN_NUM_FORMS": "0",
        "events-MAX_NUM_FORMS": "0",
    }
    return {**data, **overrides}


@pytest.fixture
def live_policy(db) -> ModelVersion:
    return ModelVersionFactory(kind="policy", status="live", checksums={"config.json": "0" * 64})


def test_the_change_permission_no_longer_lets_a_live_version_be_repointed(live_policy):
    client = staff_with("view_modelversion", "change_modelversion")
    hijack = change_form(live_policy, backend="openai", base_url="http://attacker.example:9000", model_name="x")

    response = client.post(f"{ADMIN}{live_policy.pk}/change/", hijack)

    assert response.status_code == 403
    live_policy.refresh_from_db()
    assert (live_policy.backend, live_policy.base_url, live_policy.model_name) == ("local", "", "")
    assert live_policy.status == "live"
    assert not DeploymentEvent.objects.exists()


def test_the_add_permission_no_longer_creates_a_version_in_the_admin(db):
    client = staff_with("view_modelversion", "add_modelversion")
    forged = change_form(
        ModelVersion(kind="policy", number=7, backend="openai", base_url="http://attacker.example", model_name="x"),
        metrics='{"eval": {"win_rate": 0.99}}',
        status="candidate",
    )

    response = client.post(f"{ADMIN}add/", forged)

    assert response.status_code == 403
    assert client.get(f"{ADMIN}add/").status_code == 403
    assert not ModelVersion.objects.exists()
    assert not DeploymentEvent.objects.exists()


def test_even_a_superuser_sees_every_field_read_only(admin_client_, live_policy):
    page = admin_client_.get(f"{ADMIN}{live_policy.pk}/change/")

    assert page.status_code == 200
    html = page.content.decode()
    for field in ("kind", "number", "artifact_path", "backend", "base_url", "model_name", "metrics", "status"):
        assert f'name="{field}"' not in html, field
    response = admin_client_.post(f"{ADMIN}{live_policy.pk}/change/", change_form(live_policy, backend="openai"))
    assert response.status_code == 403
    assert admin_client_.get(f"{ADMIN}add/").status_code == 403
    live_policy.refresh_from_db()
    assert live_policy.backend == "local"


def test_registration_writes_an_event_with_who_and_why(db, settings):
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["vllm.internal:8000"]
    registrar = UserFactory(username="registrar")
    registrar.user_permissions.set(Permission.objects.filter(codename="add_modelversion"))

    version = model_version_register(
        kind="policy",
        artifact_path="",
        checksums={},
        backend="openai",
        base_url="http://vllm.internal:8000/v1",
        model_name="llama",
        actor=registrar,
        reason="the 8B model on the GPU box",
    )

    (event,) = DeploymentEvent.objects.filter(version=version)
    assert (event.from_status, event.to_status, event.actor, event.reason) == (
        "",
        "candidate",
        registrar,
        "the 8B model on the GPU box",
    )
    assert str(event) == "policy v1: registered -> candidate"


def test_registration_by_a_user_needs_the_add_permission(db, settings):
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["vllm.internal"]
    with pytest.raises(NotPermitted):
        model_version_register(
            kind="policy",
            artifact_path="",
            checksums={},
            backend="openai",
            base_url="http://vllm.internal",
            model_name="m",
            actor=UserFactory(),
        )
    assert not ModelVersion.objects.exists()


@pytest.mark.parametrize(
    ("allowed", "url", "ok"),
    [
        ([], "http://127.0.0.1:8001", False),
        (["127.0.0.1"], "http://127.0.0.1:8001", True),
        (["127.0.0.1:8001"], "http://127.0.0.1:8001/v1", True),
        (["127.0.0.1:8001"], "http://127.0.0.1:8002", False),
        (["VLLM.internal"], "https://vllm.INTERNAL/v1", True),
        (["*.models.example"], "https://a.models.example", True),
        (["*.models.example"], "https://models.example", False),
        (["*.models.example"], "https://evilmodels.example", False),
        (["models.example"], "https://models.example.attacker.net", False),
        (["[::1]:8001"], "http://[::1]:8001", True),
        (["::1"], "http://[::1]:9", True),
        (["127.0.0.1"], "ftp://127.0.0.1", False),
        (["127.0.0.1"], "http://user:pass@127.0.0.1", False),
        (["127.0.0.1"], "http://127.0.0.1?x=1", False),
        (["127.0.0.1"], "not a url", False),
    ],
)
def test_base_urls_must_match_the_allow_list(settings, allowed, url, ok):
    settings.SERVING_OPENAI_ALLOWED_HOSTS = allowed
    assert (base_url_problem(url) is None) is ok


def test_an_off_list_host_is_refused_with_the_setting_named(db, settings):
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["vllm.internal"]
    with pytest.raises(RegistryError) as caught:
        model_version_register(
            kind="policy",
            artifact_path="",
            checksums={},
            backend="openai",
            base_url="http://evil.example",
            model_name="m",
        )
    assert caught.value.code == "host_not_allowed"
    assert caught.value.message == (
        "evil.example is not on SERVING_OPENAI_ALLOWED_HOSTS (which allows vllm.internal); an operator must add it"
        " there first."
    )
    assert not ModelVersion.objects.exists()


def test_register_model_registers_an_openai_server_as_a_candidate(db, settings):
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["vllm.internal"]
    out = io.StringIO()

    call_command(
        "register_model",
        "--base-url",
        "http://vllm.internal/v1",
        "--model-name",
        "llama-3-8b",
        "--metrics",
        '{"source": "external"}',
        "--reason",
        "GPU box",
        stdout=out,
    )

    version = ModelVersion.objects.get()
    assert (version.label, version.status, version.backend, version.base_url, version.model_name) == (
        "policy:1",
        "candidate",
        "openai",
        "http://vllm.internal/v1",
        "llama-3-8b",
    )
    assert version.metrics == {"source": "external"}
    assert list(version.events.values_list("from_status", "to_status", "actor", "reason")) == [
        ("", "candidate", None, "GPU box")
    ]
    assert "Registered policy:1 as a candidate" in out.getvalue()


def test_register_model_registers_a_local_checkpoint_with_checksums(db, tmp_path):
    (tmp_path / "config.json").write_text("{}")

    call_command("register_model", "--artifact", str(tmp_path), "--kind", "reward", stdout=io.StringIO())

    version = ModelVersion.objects.get()
    assert (version.label, version.artifact_path, set(version.checksums)) == (
        "reward:1",
        str(tmp_path),
        {"config.json"},
    )


def test_register_model_refuses_an_off_list_host_and_registers_nothing(db, settings):
    settings.SERVING_OPENAI_ALLOWED_HOSTS = []
    with pytest.raises(CommandError, match="not on SERVING_OPENAI_ALLOWED_HOSTS"):
        call_command("register_model", "--base-url", "http://1.2.3.4:8000", "--model-name", "m", stdout=io.StringIO())
    assert not ModelVersion.objects.exists()
