"""Admin for the feedback browser. Rows that record what users said are read-only here: they change
only through the services, so satisfaction scores stay in step with them."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from core.admin import ReadOnlyAdminMixin
from feedback import charts, insights
from feedback.models import Comparison, Conversation, Feedback, Message, MessageStep, UserSatisfaction
from models_registry.models import ModelVersion


class MessageInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Message
    fields = [
        "link",
        "role",
        "short_content",
        "status",
        "model_version",
        "source",
        "external_model",
        "token_count",
        "created_at",
    ]
    readonly_fields = fields
    show_change_link = False
    extra = 0
    ordering = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Message]:
        return super().get_queryset(request).select_related("model_version")

    @admin.display(description="message")
    def link(self, obj: Message) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:feedback_message_change", args=[obj.pk]), obj.pk)

    @admin.display(description="content")
    def short_content(self, obj: Message) -> str:
        return obj.content[:200]


class StepInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = MessageStep
    fields = ["index", "content"]
    readonly_fields = fields
    extra = 0


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["__str__", "user", "message_count", "created_at"]
    list_select_related = ["user"]
    search_fields = ["id", "title", "user__username", "user__email"]
    list_filter = ["created_at"]
    date_hierarchy = "created_at"
    inlines = [MessageInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return super().get_queryset(request).annotate(message_count=Count("messages"))

    @admin.display(ordering="message_count")
    def message_count(self, obj: Conversation) -> int:
        return obj.message_count  # type: ignore[attr-defined]


@admin.register(Message)
class MessageAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "role",
        "short_content",
        "conversation",
        "status",
        "model_version",
        "source",
        "external_model",
        "created_at",
    ]
    list_select_related = ["conversation", "model_version"]
    list_filter = ["role", "status", "model_version", "source"]
    search_fields = ["id", "content", "conversation__user__username"]
    inlines = [StepInline]

    @admin.display(description="content")
    def short_content(self, obj: Message) -> str:
        return obj.content[:80]


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    change_list_template = "admin/feedback/feedback/change_list.html"
    list_display = ["id", "user", "message_link", "step_index", "thumbs", "rating", "short_comment", "updated_at"]
    list_select_related = ["user", "step", "message__model_version"]
    list_filter = ["thumbs", "rating", "message__model_version", "updated_at"]
    search_fields = ["comment", "user__username", "message__id"]
    date_hierarchy = "updated_at"

    @admin.display(description="message")
    def message_link(self, obj: Feedback) -> str:
        url = reverse("admin:feedback_message_change", args=[obj.message_id])
        return format_html('<a href="{}">{}</a>', url, obj.message_id)

    @admin.display(description="step")
    def step_index(self, obj: Feedback) -> int | None:
        return obj.step.index if obj.step else None

    @admin.display(description="comment")
    def short_comment(self, obj: Feedback) -> str:
        return obj.comment[:80]

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.insights_view)
        return [path("insights/", view, name="feedback_feedback_insights"), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra = {"can_view_insights": request.user.has_perm("feedback.view_insights")}
        return super().changelist_view(request, {**(extra_context or {}), **extra})

    def insights_view(self, request: HttpRequest) -> HttpResponse:
        """Where users are unhappy (``feedback.insights``), with charts; the same data as
        ``GET /api/assistant/insights``, whose CSV links are on the page."""
        if not request.user.has_perm("feedback.view_insights"):
            raise PermissionDenied
        form = InsightsFilterForm(request.GET or None)
        filters = form.filters() if form.is_valid() else insights.Filters.last_days()
        data = insights.insights(filters)
        query = request.GET.urlencode()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Feedback insights",
            "form": form,
            "data": data,
            "filters": filters,
            "csv_query": f"&{query}" if query else "",
            "satisfaction_chart": charts.rate_lines_chart(
                data["satisfaction"], label="Positive rate per day, per version"
            ),
            "tags_chart": charts.bars_chart(
                [(t["tag"], t["share"], f"{t['count']} times; trend {t['trend']:+.1%}") for t in data["tags"][:15]],
                label="Share of tagged feedback giving each reason",
            ),
            "steps_chart": charts.bars_chart(
                [
                    (f"step {s['position']}", s["rate_value"] or 0.0, f"{s['down']} ✗ of {s['ratings']}")
                    for s in data["steps"][:12]
                ],
                label="Step ✗ rate by step position",
            ),
        }
        return TemplateResponse(request, "admin/feedback/insights.html", context)


class InsightsFilterForm(forms.Form):
    since = forms.DateField(required=False, help_text="default: 30 days ago")
    until = forms.DateField(required=False, help_text="default: today (whole day)")
    version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY).order_by("-number"),
        required=False,
        empty_label="every version",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise forms.ValidationError("since must not be after until.")
        return data

    def filters(self) -> insights.Filters:
        now = timezone.now()
        until = self.cleaned_data.get("until")
        end = timezone.make_aware(datetime.combine(until + timedelta(days=1), time.min)) if until else now
        since = self.cleaned_data.get("since")
        start = timezone.make_aware(datetime.combine(since, time.min)) if since else end - timedelta(days=30)
        version = self.cleaned_data.get("version")
        return insights.Filters(since=start, until=end, version_id=version.pk if version else None)


@admin.register(Comparison)
class ComparisonAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "user", "prompt", "chosen", "rejected", "is_tie", "updated_at"]
    list_select_related = ["user", "prompt", "chosen", "rejected"]
    list_filter = ["is_tie", "updated_at"]
    search_fields = ["user__username", "prompt__content"]


@admin.register(UserSatisfaction)
class UserSatisfactionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["user", "score", "count", "thumbs_up", "thumbs_down", "mean_rating", "updated_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "user__email"]
    list_filter = ["updated_at"]
