"""Writes to the registry: register a version, move versions through their status machine, and run
canaries.

Invariants: numbers per kind are unique and increasing; at most one version per kind is live and at
most one is a canary (also database constraints); a version's files are pinned by checksums when it
is registered; every status change follows ``ModelVersion.TRANSITIONS`` and leaves a
``DeploymentEvent`` in the same transaction, announced to the webhooks once it commits.

Four-eyes (``REGISTRY_FOUR_EYES``): the user who requested a version (its training run's requester)
may not approve it, and the user who approved it may not deploy it, start its canary or promote it.
The system (``actor=None``: training, bootstrap, the monitor) is exempt; so is a rollback, which
restores a version that was live before.

Every status change locks all versions of the kind, in id order, before reading them: two deploys of
the same kind then run one after the other, each seeing what the other did, and never deadlock.
Services take ids and re-read under the lock, so a stale object in the caller's hands cannot cause a
wrong change. Permissions are checked here for a user actor (``actor=None`` is the system).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from models_registry import webhooks
from models_registry.endpoints import base_url_problem
from models_registry.exceptions import (
    InvalidTransition,
    NothingToRollBackTo,
    NotPermitted,
    RegistryError,
    VersionNotFound,
)
from models_registry.models import Canary, DeploymentEvent, ModelVersion
from models_registry.selectors import next_version_number, rollback_target

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    Actor = User | None
else:
    Actor = Any

_REGISTER_ATTEMPTS = 3
Status = ModelVersion.Status
APPROVE_PERMISSION = "models_registry.approve_modelversion"
DEPLOY_PERMISSION = "models_registry.deploy_modelversion"
REGISTER_PERMISSION = "models_registry.add_modelversion"
DIRECT_REASON = "made live directly"


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
    actor: Actor = None,
    reason: str = "",
    requested_by: Actor = None,
) -> ModelVersion:
    """Record a new candidate version of ``kind`` with the next number, and its registration event.

    The one way a version comes to exist (training, bootstrap, ``--base-model``, ``register_model``):
    how a version is served never changes afterwards; serving it differently means registering a new
    version. An ``openai`` version's base URL must be on ``SERVING_OPENAI_ALLOWED_HOSTS``."""
    if kind not in ModelVersion.Kind.values:
        raise RegistryError(f"Unknown model kind {kind!r}.", code="unknown_kind")
    if backend not in ModelVersion.Backend.values:
        raise RegistryError(f"Unknown serving backend {backend!r}.", code="unknown_backend")
    if backend == ModelVersion.Backend.LOCAL and not (artifact_path and checksums):
        raise RegistryError("A local version needs an artifact folder and its checksums.", code="artifact_required")
    if backend == ModelVersion.Backend.OPENAI:
        if not (base_url and model_name):
            raise RegistryError("An openai-backend version needs a base URL and a model name.", code="server_required")
        if problem := base_url_problem(base_url):
            raise RegistryError(problem, code="host_not_allowed", fields={"base_url": [problem]})
    elif base_url or model_name:
        raise RegistryError("A local version has no server URL or model name.", code="server_not_expected")
    _check_permission(actor, REGISTER_PERMISSION)
    for attempt in range(_REGISTER_ATTEMPTS):
        try:
            # A savepoint, so a number taken by a concurrent registration can be retried.
            with transaction.atomic():
                version = ModelVersion.objects.create(
                    kind=kind,
                    number=next_version_number(kind),
                    artifact_path=artifact_path,
                    checksums=checksums,
                    backend=backend,
                    base_url=base_url,
                    model_name=model_name,
                    metrics=metrics or {},
                    parent=parent,
                    requested_by=requested_by if requested_by is not None else actor,
                )
                _log(version, "", version.status, actor=actor, reason=reason or "registered")
                return version
        except IntegrityError:
            if attempt == _REGISTER_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


@transaction.atomic
def model_version_make_live(*, version: ModelVersion, actor: Actor = None, reason: str = "") -> ModelVersion:
    """Make ``version`` the live one of its kind now and retire the one that was live.

    The direct path, for the system (bootstrap, ``--base-model``, tests): from candidate (the system
    only), approved or retired. Making the live version live again changes nothing and writes no
    event. Clears ``load_error`` so serving tries it afresh."""
    _check_permission(actor, DEPLOY_PERMISSION)
    rows = _lock_kind(version.kind)
    target = _find(rows, version.pk, version.label)
    if target.status == Status.LIVE:
        return target
    if target.status == Status.REJECTED:
        raise InvalidTransition(f"{target.label} was rejected and cannot be made live.", code="version_rejected")
    return _go_live(rows, target, actor=actor, reason=reason or DIRECT_REASON, system=actor is None)


@transaction.atomic
def model_version_approve(*, version_id: int, actor: Actor, reason: str = "") -> ModelVersion:
    """candidate -> approved, recording who approved it and when."""
    _check_permission(actor, APPROVE_PERMISSION)
    rows = _lock_version(version_id)
    target = _find(rows, version_id)
    _check_four_eyes(actor, target, requested=True)
    return _transition(target, Status.APPROVED, actor=actor, reason=reason)


@transaction.atomic
def model_version_reject(*, version_id: int, actor: Actor, reason: str = "") -> ModelVersion:
    """candidate, approved or retired -> rejected: never to be deployed or rolled back to."""
    _check_permission(actor, APPROVE_PERMISSION)
    rows = _lock_version(version_id)
    return _transition(_find(rows, version_id), Status.REJECTED, actor=actor, reason=reason)


@transaction.atomic
def model_version_deploy(*, version_id: int, actor: Actor, reason: str = "") -> ModelVersion:
    """approved (or retired: a redeploy of that exact version) -> live; the version that was live is
    retired, with its own event."""
    _check_permission(actor, DEPLOY_PERMISSION)
    rows = _lock_version(version_id)
    target = _find(rows, version_id)
    _check_four_eyes(actor, target, approved=True)
    return _go_live(rows, target, actor=actor, reason=reason)


@transaction.atomic
def model_version_rollback(*, kind: str, actor: Actor, reason: str) -> ModelVersion:
    """Make the most recently retired version of ``kind`` live again and retire the live one.

    Reject a retired version to keep rollback off it (``ModelVersion.ROLLBACK_ORDER``)."""
    _check_permission(actor, DEPLOY_PERMISSION)
    rows = _lock_kind(_known_kind(kind))
    # The rows are locked, so this read sees what the lock holder sees.
    chosen = rollback_target(kind)
    if chosen is None:
        raise NothingToRollBackTo(f"No retired {kind} version to roll back to.")
    target = _find(rows, chosen.pk, chosen.label)
    return _go_live(rows, target, actor=actor, reason=reason)


@transaction.atomic
def model_version_retire(*, version_id: int, actor: Actor, reason: str = "") -> ModelVersion:
    """live -> retired with nothing live in its place: serving then has no version of that kind."""
    _check_permission(actor, DEPLOY_PERMISSION)
    rows = _lock_version(version_id)
    return _transition(_find(rows, version_id), Status.RETIRED, actor=actor, reason=reason)


@transaction.atomic
def canary_start(*, version_id: int, share: float, actor: Actor, reason: str = "") -> Canary:
    """approved -> canary: ``version`` answers ``share`` of the new conversations beside the live
    version of its kind until it is promoted or stopped. At most one canary per kind."""
    _check_permission(actor, DEPLOY_PERMISSION)
    if not 0 < share < 1:
        raise RegistryError(
            f"A canary's share must be between 0 and 1 (exclusive); got {share}.",
            code="invalid_share",
            fields={"share": ["Must be between 0 and 1, e.g. 0.1 for 10% of new conversations."]},
        )
    rows = _lock_version(version_id)
    target = _find(rows, version_id)
    _check_four_eyes(actor, target, approved=True)
    running = next((row for row in rows if row.status == Status.CANARY), None)
    if running is not None:
        raise InvalidTransition(
            f"{running.label} is already the {target.kind} canary; promote or stop it first.", code="canary_running"
        )
    baseline = next((row for row in rows if row.status == Status.LIVE), None)
    if baseline is None:
        raise InvalidTransition(f"No {target.kind} version is live to compare a canary with; deploy one instead.")
    why = f"canary at {share:.0%} of new conversations beside {baseline.label}" + (f": {reason}" if reason else "")
    _transition(target, Status.CANARY, actor=actor, reason=why)
    return Canary.objects.create(
        kind=target.kind, version=target, baseline=baseline, share=share, started_by=actor, reason=reason
    )


@transaction.atomic
def canary_stop(*, kind: str, actor: Actor, reason: str) -> Canary:
    """canary -> approved: the canary stops answering and is marked as having failed its canary."""
    _check_permission(actor, DEPLOY_PERMISSION)
    rows = _lock_kind(_known_kind(kind))
    canary = _running_canary(kind)
    version = _find(rows, canary.version_id)
    _transition(
        version, Status.APPROVED, actor=actor, reason=f"canary stopped: {reason}" if reason else "canary stopped"
    )
    return _end_canary(canary, Canary.Outcome.STOPPED, actor=actor, reason=reason)


@transaction.atomic
def canary_promote(*, kind: str, actor: Actor, reason: str = "") -> ModelVersion:
    """canary -> live: the canary becomes the live version and the one that was live retires."""
    _check_permission(actor, DEPLOY_PERMISSION)
    rows = _lock_kind(_known_kind(kind))
    canary = _running_canary(kind)
    version = _find(rows, canary.version_id)
    _check_four_eyes(actor, version, approved=True)
    why = f"canary promoted: {reason}" if reason else "canary promoted"
    return _go_live(rows, version, actor=actor, reason=why)


def _running_canary(kind: str) -> Canary:
    canary = Canary.objects.filter(kind=kind, outcome=Canary.Outcome.RUNNING).first()
    if canary is None:
        raise InvalidTransition(f"No {kind} canary is running.", code="no_canary")
    return canary


def _end_canary(canary: Canary, outcome: str, *, actor: Actor, reason: str) -> Canary:
    canary.outcome = outcome
    canary.ended_at = timezone.now()
    canary.ended_by = actor
    canary.reason = "\n".join(part for part in (canary.reason, reason) if part)
    canary.save(update_fields=["outcome", "ended_at", "ended_by", "reason"])
    return canary


def _known_kind(kind: str) -> str:
    if kind not in ModelVersion.Kind.values:
        raise RegistryError(f"Unknown model kind {kind!r}.", code="unknown_kind")
    return kind


def _check_permission(actor: Actor, permission: str) -> None:
    if actor is not None and not actor.has_perm(permission):
        raise NotPermitted(f"{actor} may not do this: it needs the {permission.split('.')[1]} permission.")


def _check_four_eyes(actor: Actor, version: ModelVersion, *, requested: bool = False, approved: bool = False) -> None:
    """Under REGISTRY_FOUR_EYES a second person must act: not the version's requester (to approve),
    not its approver (to deploy, canary or promote). The system is exempt."""
    if actor is None or not settings.REGISTRY_FOUR_EYES:
        return
    if requested and version.requested_by_id == actor.pk:
        raise NotPermitted(
            f"{actor} requested {version.label} and may not also approve it (four-eyes): another approver must.",
            code="four_eyes",
        )
    if approved and version.approved_by_id == actor.pk:
        raise NotPermitted(
            f"{actor} approved {version.label} and may not also deploy it (four-eyes): another deployer must.",
            code="four_eyes",
        )


def _lock_kind(kind: str) -> list[ModelVersion]:
    """Every version of ``kind``, locked, in id order: the one lock order of all status changes."""
    return list(ModelVersion.objects.select_for_update().filter(kind=kind).order_by("id"))


def _lock_version(version_id: int) -> list[ModelVersion]:
    # A version never changes kind, so reading the kind before taking the lock is safe.
    kind = ModelVersion.objects.filter(id=version_id).values_list("kind", flat=True).first()
    if kind is None:
        raise VersionNotFound(f"Model version {version_id} does not exist.")
    return _lock_kind(kind)


def _find(rows: list[ModelVersion], version_id: int, label: str | None = None) -> ModelVersion:
    target = next((row for row in rows if row.pk == version_id), None)
    if target is None:
        raise VersionNotFound(f"Model version {label or version_id} does not exist.")
    return target


def _go_live(
    rows: list[ModelVersion], target: ModelVersion, *, actor: Actor, reason: str, system: bool = False
) -> ModelVersion:
    """Retire the live version of the kind (if another) and make ``target`` live; ``rows`` are locked.
    A running canary ends: promoted if it is ``target``, else stopped (what it was compared with is
    gone)."""
    _check_transition(target, Status.LIVE, system=system)
    replaced = f"replaced by {target.label}: {reason}" if reason else f"replaced by {target.label}"
    canary = Canary.objects.filter(kind=target.kind, outcome=Canary.Outcome.RUNNING).first()
    if canary is not None and canary.version_id != target.pk:
        stopped = f"stopped: {target.label} went live instead"
        _transition(_find(rows, canary.version_id), Status.APPROVED, actor=actor, reason=f"canary {stopped}")
        _end_canary(canary, Canary.Outcome.STOPPED, actor=actor, reason=stopped)
    for row in rows:
        if row.status == Status.LIVE and row.pk != target.pk:
            _transition(row, Status.RETIRED, actor=actor, reason=replaced)
    live = _transition(target, Status.LIVE, actor=actor, reason=reason, system=system)
    if canary is not None and canary.version_id == target.pk:
        _end_canary(canary, Canary.Outcome.PROMOTED, actor=actor, reason=reason)
    return live


def _check_transition(version: ModelVersion, to: str, *, system: bool = False) -> None:
    allowed = version.allowed_transitions(system=system)
    if to in allowed:
        return
    start = f"{version.label} cannot go from {version.status} to {to}"
    if not allowed:
        raise InvalidTransition(f"{start}; {version.status} is final.")
    raise InvalidTransition(f"{start}; from {version.status} it can go to {', '.join(sorted(allowed))}.")


def _transition(version: ModelVersion, to: str, *, actor: Actor, reason: str, system: bool = False) -> ModelVersion:
    """Move a locked ``version`` to ``to`` along ``ModelVersion.TRANSITIONS`` and log it. The one place
    that writes a status."""
    _check_transition(version, to, system=system)
    now = timezone.now()
    from_status = version.status
    version.status = to
    fields = ["status"]
    if to == Status.LIVE:
        version.deployed_at = now
        version.load_error = ""
        fields += ["deployed_at", "load_error"]
    elif to == Status.APPROVED:
        version.approved_by_id = actor.pk if actor is not None else None
        version.approved_at = now
        fields += ["approved_by", "approved_at"]
    version.save(update_fields=fields)
    _log(version, from_status, to, actor=actor, reason=reason)
    return version


def _log(version: ModelVersion, from_status: str, to: str, *, actor: Actor, reason: str) -> DeploymentEvent:
    """The audit row of a change, and its webhook once the transaction commits."""
    event = DeploymentEvent.objects.create(
        version=version, from_status=from_status, to_status=to, actor_id=actor.pk if actor else None, reason=reason
    )
    webhooks.notify_on_commit("deployment_event", webhooks.deployment_event_payload(event, version))
    return event


def model_version_record_load_error(*, version_id: int, error: str) -> None:
    """Serving could not load this version: keep the reason for operators (empty clears it)."""
    ModelVersion.objects.filter(id=version_id).update(load_error=error[:10_000])
