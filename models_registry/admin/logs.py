"""Admin for the registry's logs: the deployment log, the canaries, the webhooks' outbox."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.admin import ReadOnlyAdminMixin
from models_registry import webhooks
from models_registry.models import Canary, DeploymentEvent, WebhookDelivery
from models_registry.services import (
    DEPLOY_PERMISSION,
)


@admin.register(DeploymentEvent)
class DeploymentEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The audit log: read-only, append-only (rows are written by the services only)."""

    list_display = ["created_at", "version", "from_status", "to_status", "actor_name", "reason"]
    list_filter = ["to_status", "version__kind"]
    list_select_related = ["version", "actor"]
    search_fields = ["reason", "actor__username"]
    date_hierarchy = "created_at"

    @admin.display(description="by", ordering="actor__username")
    def actor_name(self, obj: DeploymentEvent) -> str:
        return obj.actor_label


@admin.register(Canary)
class CanaryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Every canary, running or ended, and how it ended."""

    list_display = ["__str__", "kind", "version", "baseline", "share", "outcome", "started_at", "ended_at"]
    list_filter = ["kind", "outcome"]
    list_select_related = ["version", "baseline"]
    date_hierarchy = "started_at"


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The webhooks' outbox: each notice to each receiver, whether it arrived, how many tries it took
    and the last error. Failed ones (a receiver down for longer than the retries last) can be sent
    again once the receiver is fixed."""

    list_display = ["created_at", "event_type", "url", "status", "attempts", "last_error", "finished_at"]
    list_filter = ["status", "event_type"]
    search_fields = ["url", "id"]
    date_hierarchy = "created_at"
    actions = ["send_again"]

    def has_deploy_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(DEPLOY_PERMISSION)

    @admin.action(description="Send the selected deliveries again", permissions=["deploy"])
    def send_again(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = webhooks.deliveries_send_again(list(queryset.values_list("id", flat=True)))
        skipped = queryset.count() - count
        note = f" ({skipped} not failed, left alone)" if skipped else ""
        self.message_user(request, f"{count} deliveries queued again{note}.", messages.SUCCESS)
