"""Writes to the registry: register a version, make one live.

The full approve/deploy/rollback state machine and its audit log come with the deployment issue; these
two services are what bootstrap and serving need, and keep the invariants that matter already: numbers
per kind are unique and increasing, exactly one version per kind is live, and a version's files are
pinned by checksums when it is registered.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from models_registry.exceptions import RegistryError
from models_registry.models import ModelVersion
from models_registry.selectors import next_version_number

_REGISTER_ATTEMPTS = 3


def model_version_register(
    *,
    kind: str,
    artifact_path: str,
    checksums: dict[str, str],
    backend: str = ModelVersion.Backend.LOCAL,
    base_url: str = "",
    model_name: str = "",
    metrics: dict[str, Any] | None = None,
    parent: ModelVersion | None = None,
) -> ModelVersion:
    """Record a new candidate version of ``kind`` with the next number."""
    if kind not in ModelVersion.Kind.values:
        raise RegistryError(f"Unknown model kind {kind!r}.", code="unknown_kind")
    if backend not in ModelVersion.Backend.values:
        raise RegistryError(f"Unknown serving backend {backend!r}.", code="unknown_backend")
    if backend == ModelVersion.Backend.LOCAL and not (artifact_path and checksums):
        raise RegistryError("A local version needs an artifact folder and its checksums.", code="artifact_required")
    if backend == ModelVersion.Backend.OPENAI and not (base_url and model_name):
        raise RegistryError("An openai-backend version needs a base URL and a model name.", code="server_required")
    for attempt in range(_REGISTER_ATTEMPTS):
        try:
            # A savepoint, so a number taken by a concurrent registration can be retried.
            with transaction.atomic():
                return ModelVersion.objects.create(
                    kind=kind,
                    number=next_version_number(kind),
                    artifact_path=artifact_path,
                    checksums=checksums,
                    backend=backend,
                    base_url=base_url,
                    model_name=model_name,
                    metrics=metrics or {},
                    parent=parent,
                )
        except IntegrityError:
            if attempt == _REGISTER_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


@transaction.atomic
def model_version_make_live(*, version: ModelVersion) -> ModelVersion:
    """Make ``version`` the live one of its kind and retire the one that was live.

    Every version of the kind is locked, in id order: a concurrent call then waits and sees this one
    live (and retires it), instead of tripping over the one-live-per-kind constraint. Making the live
    version live again changes nothing. Clears ``load_error`` so serving tries it afresh."""
    rows = list(ModelVersion.objects.select_for_update().filter(kind=version.kind).order_by("id"))
    target = next((row for row in rows if row.pk == version.pk), None)
    if target is None:
        raise RegistryError(f"Model version {version.label} does not exist.", code="not_found")
    if target.status == ModelVersion.Status.REJECTED:
        raise RegistryError(f"{target.label} was rejected and cannot be made live.", code="version_rejected")
    if target.status == ModelVersion.Status.LIVE:
        return target
    for row in rows:
        if row.status == ModelVersion.Status.LIVE:
            row.status = ModelVersion.Status.RETIRED
            row.save(update_fields=["status"])
    target.status = ModelVersion.Status.LIVE
    target.deployed_at = timezone.now()
    target.load_error = ""
    target.save(update_fields=["status", "deployed_at", "load_error"])
    return target


def model_version_record_load_error(*, version_id: int, error: str) -> None:
    """Serving could not load this version: keep the reason for operators (empty clears it)."""
    ModelVersion.objects.filter(id=version_id).update(load_error=error[:10_000])
