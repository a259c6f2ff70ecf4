"""``python manage.py forget_user <username|id> [--yes]``

Erases a user (the right to be forgotten, ``training.erasure``): shows what goes, asks for
confirmation (``--yes`` skips it), then removes their rows, invalidates the dataset snapshots that
hold them (their files are removed) and prints the erasure record. For an id that no longer exists,
it says whether (and when) that user was erased.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.management.base import BaseCommand, CommandError, CommandParser

from training.erasure import ErasureRefused, erasure_counts, erasures_of, snapshots_holding, user_forget
from training.models import UserErasure


def _find(who: str) -> AbstractBaseUser | None:
    users = get_user_model().objects
    found = users.filter(username=who).first()
    if found is None and who.isdigit():
        found = users.filter(pk=int(who)).first()
    return found


def _lines(counts: dict[str, int]) -> list[str]:
    return [f"  {kind.replace('_', ' ')}: {n}" for kind, n in counts.items() if n and not kind.startswith("snapshots")]


class Command(BaseCommand):
    help = (
        "Erase a user: their conversations, messages, feedback, comparisons, tokens, sessions; and invalidate the"
        " dataset snapshots that hold their rows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user", metavar="USERNAME_OR_ID", help="The user's username, or their numeric id.")
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

    def handle(self, *args: Any, **opts: Any) -> None:
        who: str = opts["user"]
        user = _find(who)
        if user is None:
            done = erasures_of(int(who)) if who.isdigit() else []
            if done:
                raise CommandError(
                    f"No user {who}: user id {who} was erased on {done[0].created_at:%Y-%m-%d %H:%M} UTC"
                    f" (erasure {done[0].pk})."
                )
            raise CommandError(f"No user with username or id {who!r}.")
        counts = erasure_counts(user)
        snapshots = snapshots_holding(user)
        fresh = [s for s in snapshots if not s.is_invalidated]
        self.stdout.write(f"Erasing {user.get_username()} (id {user.pk}) removes:")
        self.stdout.write("\n".join(_lines(counts)) or "  no rows")
        self.stdout.write(
            f"and invalidates {len(fresh)} dataset snapshot(s) that hold their rows, removing their files"
            + (f": {', '.join(str(s.pk) for s in fresh)}" if fresh else "")
            + "."
        )
        if not opts["yes"] and not self._confirmed(f"Type 'yes' to erase {user.get_username()}: "):
            raise CommandError("Not erased.")
        user_id = user.pk
        try:
            erasure = user_forget(user=user, source=UserErasure.Source.COMMAND)
        except ErasureRefused as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(self.style.SUCCESS(f"Erased user id {user_id} (erasure {erasure.pk})."))
        self.stdout.write("Removed:\n" + ("\n".join(_lines(erasure.counts)) or "  no rows"))
        for snapshot in erasure.snapshots.order_by("id"):
            self.stdout.write(f"  dataset snapshot {snapshot.pk}: {snapshot.invalidated_reason}")
        self.stdout.write(f"Erasure record {erasure.pk}, subject {erasure.subject[:16]}... (no personal data).")

    def _confirmed(self, prompt: str) -> bool:
        try:
            return input(prompt).strip().lower() == "yes"
        except EOFError:
            return False
