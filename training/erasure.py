"""Erasing a user (the right to be forgotten): their rows go, and so does every dataset snapshot
built from them.

``user_forget`` is the one service (``manage.py forget_user``, the admin's user delete); a delete of
the user anywhere else (the ORM, a shell) takes the same path through a ``pre_delete`` receiver
(``on_user_pre_delete``, connected in ``TrainingConfig.ready``), so no delete skips it. Either way,
in the delete's transaction:

1. Count what goes: the user's conversations with their messages, steps, the feedback and comparisons
   on them and the user's own, their satisfaction row, API token, idempotency records, admin log
   entries by and about them, and their sessions (the session table has no foreign key: matched by
   the user id stored in each). Rows that only name them as requester (training runs, cycles, model
   versions) are kept and unlinked (``SET_NULL``).
2. Find the dataset snapshots that hold their rows: a build reads every message created up to its
   ``source.read_until``, and every user turn becomes a ``prompts`` row, so a snapshot holds the
   user's rows iff they had a message by then. Snapshot rows are TRL's bare formats (no user or
   conversation column) and rows are shared across users (duplicates written once, pairs across
   conversations), so a snapshot cannot be rewritten without them: it is invalidated
   (``invalidated_at``, ``invalidated_reason``) and its files are removed once the transaction
   commits. The row stays, for the lineage of the runs and versions made from it; no run trains on
   it again (``training_run_create``, the runner and the cycle refuse).
3. Write a ``UserErasure`` row without personal data: a keyed hash of the user id, the counts, the
   snapshots; then delete the user (the database cascades the rest).

A user named in the registry's audit trail (who approved or deployed a version, started a canary) is
protected there; erasing them is refused with a clear error (``ErasureRefused``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.contrib.sessions.models import Session
from django.db import transaction
from django.db.models import Min, ProtectedError, Q, RestrictedError
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.dateparse import parse_datetime
from rest_framework.authtoken.models import Token

from core.models import IdempotencyRecord
from feedback.models import Comparison, Conversation, Feedback, Message, MessageStep, UserSatisfaction
from models_registry.models import ModelVersion
from training.exceptions import TrainingError
from training.models import Cycle, DatasetSnapshot, TrainingRun, UserErasure

logger = logging.getLogger(__name__)

_DB_SESSIONS = ("django.contrib.sessions.backends.db", "django.contrib.sessions.backends.cached_db")


class ErasureRefused(TrainingError):
    http_status = 409
    code = "erasure_refused"


def erasure_subject(user_id: int) -> str:
    """The keyed hash an erasure is recorded under: proves "user N was erased" to whoever holds
    SECRET_KEY and the id, and tells no one else who it was."""
    return salted_hmac("training.UserErasure", f"user:{user_id}", algorithm="sha256").hexdigest()


def erasures_of(user_id: int) -> list[UserErasure]:
    return list(UserErasure.objects.filter(subject=erasure_subject(user_id)).prefetch_related("snapshots"))


def _sessions_of(user_id: int) -> list[str]:
    if settings.SESSION_ENGINE not in _DB_SESSIONS:
        return []
    wanted = str(user_id)
    return [s.session_key for s in Session.objects.iterator() if str(s.get_decoded().get("_auth_user_id")) == wanted]


def _log_entries_of(user: User) -> Any:
    about = Q(content_type=ContentType.objects.get_for_model(type(user)), object_id=str(user.pk))
    return LogEntry.objects.filter(Q(user_id=user.pk) | about)


def erasure_counts(user: User, *, sessions: list[str] | None = None) -> dict[str, int]:
    """What erasing ``user`` removes (and, ``unlinked_*``, keeps without them), by kind. ``sessions``:
    their session keys, when already found (finding them reads the whole session table)."""
    mine = Q(conversation__user=user)
    return {
        "conversations": Conversation.objects.filter(user=user).count(),
        "messages": Message.objects.filter(mine).count(),
        "steps": MessageStep.objects.filter(message__conversation__user=user).count(),
        "feedback": Feedback.objects.filter(Q(user=user) | Q(message__conversation__user=user)).count(),
        "comparisons": Comparison.objects.filter(Q(user=user) | Q(prompt__conversation__user=user)).count(),
        "satisfaction": UserSatisfaction.objects.filter(user=user).count(),
        "tokens": Token.objects.filter(user=user).count(),
        "idempotency_records": IdempotencyRecord.objects.filter(user=user).count(),
        "admin_log_entries": _log_entries_of(user).count(),
        "sessions": len(_sessions_of(user.pk) if sessions is None else sessions),
        "unlinked_training_runs": TrainingRun.objects.filter(requested_by=user).count(),
        "unlinked_cycles": Cycle.objects.filter(requested_by=user).count(),
        "unlinked_model_versions": ModelVersion.objects.filter(requested_by=user).count(),
    }


def _read_until(snapshot: DatasetSnapshot) -> datetime:
    parsed = parse_datetime(str((snapshot.source or {}).get("read_until") or ""))
    return parsed or snapshot.created_at


def snapshots_holding(user: User) -> list[DatasetSnapshot]:
    """The snapshots built after the user's first message: each read it (see the module docstring)."""
    first = Message.objects.filter(conversation__user=user).aggregate(first=Min("created_at"))["first"]
    if first is None:
        return []
    built_after = DatasetSnapshot.objects.filter(created_at__gte=first).order_by("id")
    return [snapshot for snapshot in built_after if _read_until(snapshot) >= first]


def _remove_files(snapshot_id: int, path: str) -> None:
    """Remove a snapshot's folder (after the erasure committed); a failure is recorded on the snapshot."""
    folder = Path(path)
    if not (folder / "manifest.json").is_file():  # not a snapshot folder (or already gone): touch nothing
        if folder.exists():
            logger.error("dataset %s: %s has no manifest.json; not removed", snapshot_id, folder)
        return
    errors: list[str] = []
    shutil.rmtree(folder, onerror=lambda _f, p, info: errors.append(f"{p}: {info[1]}"))
    if errors:
        logger.error("dataset %s: removing %s failed: %s", snapshot_id, folder, "; ".join(errors))
        snapshot = DatasetSnapshot.objects.get(pk=snapshot_id)
        DatasetSnapshot.objects.filter(pk=snapshot_id).update(
            invalidated_reason=f"{snapshot.invalidated_reason} Removing its files failed ({errors[0]}); remove"
            f" {folder} by hand."
        )


def _record(user: User, *, source: str, actor: User | None) -> UserErasure:
    """Steps 1 and 2 and the ``UserErasure`` row; the caller deletes the user."""
    # Every write of the user's locks their satisfaction row first (``feedback.services``); taking it
    # here too, a rating racing the erasure waits for it instead of deadlocking with the deletes (which
    # would take the feedback row, then the satisfaction row), and the counts are of the rows that go.
    list(UserSatisfaction.objects.select_for_update().filter(user_id=user.pk).values_list("pk", flat=True))
    sessions = _sessions_of(user.pk)
    counts = erasure_counts(user, sessions=sessions)
    held = snapshots_holding(user)
    now = timezone.now()
    erasure = UserErasure.objects.create(
        subject=erasure_subject(user.pk),
        source=source,
        actor=actor if actor is not None and actor.pk != user.pk else None,
        counts={**counts, "snapshots": len(held), "snapshots_invalidated": sum(not s.is_invalidated for s in held)},
    )
    erasure.snapshots.set(held)
    for snapshot in held:
        if snapshot.is_invalidated:
            continue
        reason = (
            f"Erasure {erasure.pk} on {now:%Y-%m-%d %H:%M} UTC: it held rows of an erased user; its files were"
            " removed and no run trains on it again."
        )
        DatasetSnapshot.objects.filter(pk=snapshot.pk).update(invalidated_at=now, invalidated_reason=reason)
        snapshot.invalidated_at, snapshot.invalidated_reason = now, reason
        transaction.on_commit(partial(_remove_files, snapshot.pk, snapshot.path))
    # Rows without a foreign key to the user (sessions) or whose key would not cascade (log entries
    # about the user) go explicitly.
    Session.objects.filter(session_key__in=sessions).delete()
    _log_entries_of(user).delete()
    logger.info("user erased: erasure %s, %s", erasure.pk, erasure.counts)
    return erasure


@transaction.atomic
def user_forget(*, user: User, actor: User | None = None, source: str = UserErasure.Source.COMMAND) -> UserErasure:
    """Erase ``user``: their rows, the snapshots that hold them, the user; returns the erasure record.
    Refused (nothing changes) when the registry's audit trail names them."""
    erasure = _record(user, source=source, actor=actor)
    user._erasure = erasure  # type: ignore[attr-defined]  # tells on_user_pre_delete it is recorded
    try:
        user.delete()
    except (ProtectedError, RestrictedError) as exc:
        kinds: dict[str, int] = {}
        found: Iterable[Any] = getattr(exc, "protected_objects", None) or getattr(exc, "restricted_objects", None) or ()
        for obj in found:
            name = str(type(obj)._meta.verbose_name_plural)
            kinds[name] = kinds.get(name, 0) + 1
        named = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        raise ErasureRefused(
            f"{user.get_username()} cannot be erased: the audit trail names them ({named}). Deactivate the"
            " account instead (unset 'active'); their conversations and feedback can be deleted in the admin."
        ) from None
    return erasure


def on_user_pre_delete(sender: type, instance: User, **kwargs: Any) -> None:
    """A user deleted other than through ``user_forget`` (the ORM, a shell): the same erasure, in the
    delete's transaction, before the database cascades their rows."""
    if getattr(instance, "_erasure", None) is not None:
        return
    instance._erasure = _record(instance, source=UserErasure.Source.DELETE, actor=None)  # type: ignore[attr-defined]
