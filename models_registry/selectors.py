from __future__ import annotations

from models_registry.models import ModelVersion


def live_version(kind: str) -> ModelVersion | None:
    return ModelVersion.objects.filter(kind=kind, status=ModelVersion.Status.LIVE).first()


def live_version_key(kind: str) -> tuple[int, object] | None:
    """``(id, deployed_at)`` of the live version, one cheap query: what serving polls to notice a deploy
    (a new id) or a redeploy of the same version (a new ``deployed_at``)."""
    row = (
        ModelVersion.objects.filter(kind=kind, status=ModelVersion.Status.LIVE).values_list("id", "deployed_at").first()
    )
    return (row[0], row[1]) if row else None


def next_version_number(kind: str) -> int:
    latest = ModelVersion.objects.filter(kind=kind).order_by("-number").values_list("number", flat=True).first()
    return (latest or 0) + 1


def rollback_target(kind: str) -> ModelVersion | None:
    """The version a rollback of ``kind`` would make live: the most recently retired one."""
    return (
        ModelVersion.objects.filter(kind=kind, status=ModelVersion.Status.RETIRED)
        .order_by(*ModelVersion.ROLLBACK_ORDER)
        .first()
    )
