"""The user admin, with deletes that are erasures (``training.erasure.user_forget``): the user's rows,
the dataset snapshots that hold them, and an erasure record; and the erasure records, read-only.

The admin's deletion log entry names no one ("erased user"), so the log keeps no personal data of
the user either."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.contenttypes.models import ContentType
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html_join

from core.admin import ReadOnlyAdminMixin
from training.erasure import erasure_counts, snapshots_holding, user_forget
from training.models import UserErasure

User = get_user_model()


def _summary(erasure: UserErasure) -> str:
    counts = erasure.counts
    kinds = ("conversations", "messages", "feedback", "comparisons")
    removed = ", ".join(f"{counts.get(kind, 0)} {kind}" for kind in kinds)
    return f"erasure {erasure.pk}: removed {removed}; {counts.get('snapshots_invalidated', 0)} snapshots invalidated"


class ErasingUserAdmin(UserAdmin):
    """Django's user admin; deleting a user erases them."""

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        """The confirmation page lists what the erasure removes, by kind (not every message), and
        needs no delete permission on the rows that go with the user (the read-only conversation and
        feedback admins have none): the permission to delete a user is the permission to erase one.
        Rows that protect the user (the registry's audit trail) still refuse it."""
        _, _, _, protected = super().get_deleted_objects(objs, request)
        summary: list[Any] = []
        for user in objs:
            counts = erasure_counts(user)
            held = [s for s in snapshots_holding(user) if not s.is_invalidated]
            parts = [f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items() if n]
            summary.append(f"{user.get_username()}: " + (", ".join(parts) or "no rows"))
            if held:
                summary.append(
                    f"{len(held)} dataset snapshot(s) holding their rows are invalidated and their files removed: "
                    + ", ".join(str(s.pk) for s in held)
                )
        return summary, {}, set(), protected

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        erasure = user_forget(user=obj, actor=request.user, source=UserErasure.Source.ADMIN)
        self.message_user(request, _summary(erasure), messages.INFO)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for user in list(queryset):
            erasure = user_forget(user=user, actor=request.user, source=UserErasure.Source.ADMIN)
            self.message_user(request, _summary(erasure), messages.INFO)

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        content_type = ContentType.objects.get_for_model(User)
        return [
            LogEntry.objects.create(
                user_id=request.user.pk,
                content_type=content_type,
                object_id=None,
                object_repr="erased user",
                action_flag=DELETION,
            )
            for _ in queryset
        ]


admin.site.unregister(User)
admin.site.register(User, ErasingUserAdmin)


@admin.register(UserErasure)
class UserErasureAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "created_at", "source", "actor", "short_subject", "snapshot_count"]
    list_filter = ["source"]
    search_fields = ["subject"]
    list_select_related = ["actor"]
    fields = ["created_at", "source", "actor", "subject", "counts", "snapshot_links"]
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[UserErasure]:
        return super().get_queryset(request).prefetch_related("snapshots")

    @admin.display(description="subject")
    def short_subject(self, obj: UserErasure) -> str:
        return obj.subject[:12]

    @admin.display(description="snapshots")
    def snapshot_count(self, obj: UserErasure) -> int:
        return len(obj.snapshots.all())

    @admin.display(description="dataset snapshots that held their rows")
    def snapshot_links(self, obj: UserErasure) -> str:
        rows = ((reverse("admin:training_datasetsnapshot_change", args=[s.pk]), s) for s in obj.snapshots.all())
        return format_html_join(", ", '<a href="{}">{}</a>', rows) or "-"
