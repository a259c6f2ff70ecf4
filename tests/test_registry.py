"""Registering versions, making one live, and pinning artifacts with checksums."""

from __future__ import annotations

import threading

import pytest
from django.db import IntegrityError, connection, transaction

from models_registry.artifacts import sha256_tree, verify_checksums
from models_registry.exceptions import ChecksumMismatch, RegistryError
from models_registry.models import ModelVersion
from models_registry.selectors import live_version, live_version_key
from models_registry.services import model_version_make_live, model_version_register
from tests.factories import ModelVersionFactory


@pytest.fixture
def artifact(tmp_path):
    folder = tmp_path / "artifact"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "weights.bin").write_bytes(b"\x00\x01\x02")
    return folder


def register(kind: str = "policy", **kwargs) -> ModelVersion:
    return model_version_register(kind=kind, artifact_path="/models/x", checksums={"config.json": "0" * 64}, **kwargs)


# --- Checksums ---------------------------------------------------------------------------------------


def test_sha256_tree_hashes_every_file_by_relative_path(artifact):
    assert sha256_tree(artifact) == {
        "config.json": "f9d86028c6e0d64e225186f96acb69338b2c59764df79162107f5c4bb34d1310",
        "sub/weights.bin": "ae4b3280e56e2faf83f414a6e3dabe9d5fbe18976544c05fed121accb85b53fc",
    }


def test_verify_checksums_accepts_the_registered_files(artifact):
    verify_checksums(artifact, sha256_tree(artifact))


def test_verify_checksums_names_changed_missing_and_unexpected_files(artifact):
    checksums = sha256_tree(artifact)
    (artifact / "config.json").write_text('{"a": 2}')
    (artifact / "sub" / "weights.bin").unlink()
    (artifact / "extra.safetensors").write_bytes(b"x")

    with pytest.raises(ChecksumMismatch) as caught:
        verify_checksums(artifact, checksums)

    assert caught.value.code == "checksum_mismatch"
    assert caught.value.message == (
        f"Artifact {artifact} does not match its recorded checksums "
        "(changed: config.json; missing: sub/weights.bin; unexpected: extra.safetensors)."
    )


def test_verify_checksums_refuses_a_missing_folder_or_no_checksums(artifact, tmp_path):
    with pytest.raises(ChecksumMismatch, match="does not exist"):
        verify_checksums(tmp_path / "gone", {"config.json": "0" * 64})
    with pytest.raises(ChecksumMismatch, match="No checksums are recorded"):
        verify_checksums(artifact, {})


# --- Register ----------------------------------------------------------------------------------------


def test_register_numbers_versions_per_kind_as_candidates(db):
    first, second, reward = register(), register(), register("reward")

    assert [first.label, second.label, reward.label] == ["policy:1", "policy:2", "reward:1"]
    assert {first.status, second.status, reward.status} == {"candidate"}
    assert first.metrics == {}
    assert first.backend == "local"
    assert first.load_error == ""


def test_register_keeps_metrics_parent_and_the_openai_server(db, settings):
    settings.SERVING_OPENAI_ALLOWED_HOSTS = ["127.0.0.1:8001"]
    parent = register()
    child = model_version_register(
        kind="policy",
        artifact_path="",
        checksums={},
        backend="openai",
        base_url="http://127.0.0.1:8001",
        model_name="tiny",
        metrics={"win_rate": 0.6},
        parent=parent,
    )
    child.refresh_from_db()
    assert (child.parent, child.metrics, child.base_url, child.model_name) == (
        parent,
        {"win_rate": 0.6},
        "http://127.0.0.1:8001",
        "tiny",
    )
    assert list(parent.children.all()) == [child]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"kind": "critic"}, "unknown_kind"),
        ({"backend": "grpc"}, "unknown_backend"),
        ({"checksums": {}}, "artifact_required"),
        ({"artifact_path": ""}, "artifact_required"),
        ({"backend": "openai", "model_name": "tiny"}, "server_required"),
        ({"backend": "openai", "base_url": "http://x"}, "server_required"),
        ({"backend": "openai", "base_url": "http://evil.example", "model_name": "m"}, "host_not_allowed"),
        ({"base_url": "http://127.0.0.1:8001", "model_name": "m"}, "server_not_expected"),
    ],
)
def test_register_refuses_incomplete_versions(db, kwargs, code):
    arguments = {"kind": "policy", "artifact_path": "/models/x", "checksums": {"a": "0" * 64}, **kwargs}
    with pytest.raises(RegistryError) as caught:
        model_version_register(**arguments)
    assert caught.value.code == code
    assert not ModelVersion.objects.exists()


def test_the_database_refuses_an_openai_version_without_a_server(db):
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersionFactory(backend="openai", base_url="", model_name="tiny")


# --- Make live ---------------------------------------------------------------------------------------


def test_make_live_retires_the_live_version_of_the_same_kind_only(db):
    old, new, reward = register(), register(), register("reward")
    model_version_make_live(version=old)
    model_version_make_live(version=reward)

    result = model_version_make_live(version=new)

    for version in (old, new, reward):
        version.refresh_from_db()
    assert (old.status, new.status, reward.status) == ("retired", "live", "live")
    assert result.deployed_at is not None
    assert new.deployed_at == result.deployed_at
    assert live_version("policy") == new
    assert live_version_key("policy") == (new.id, new.deployed_at)


def test_make_live_of_the_live_version_changes_nothing(db):
    version = register()
    deployed_at = model_version_make_live(version=version).deployed_at

    again = model_version_make_live(version=version)

    assert again.deployed_at == deployed_at


def test_make_live_clears_the_last_load_error(db):
    version = register()
    ModelVersion.objects.filter(id=version.id).update(load_error="boom", status="retired")

    assert model_version_make_live(version=version).load_error == ""
    version.refresh_from_db()
    assert version.load_error == ""


def test_make_live_refuses_a_rejected_version(db):
    version = register()
    ModelVersion.objects.filter(id=version.id).update(status="rejected")

    with pytest.raises(RegistryError) as caught:
        model_version_make_live(version=version)
    assert caught.value.code == "version_rejected"


def test_no_live_version_reads_as_none(db):
    register()
    assert live_version("policy") is None
    assert live_version_key("policy") is None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_make_live_calls_leave_exactly_one_live_version():
    versions = [register() for _ in range(4)]
    model_version_make_live(version=versions[0])
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def deploy(version: ModelVersion) -> None:
        try:
            barrier.wait()
            model_version_make_live(version=version)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=deploy, args=(v,)) for v in versions[1:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert ModelVersion.objects.filter(kind="policy", status="live").count() == 1
    assert ModelVersion.objects.filter(kind="policy", status="retired").count() == 3
