"""Admin for the feedback browser. Rows that record what users said are read-only here: they change
only through the services, so satisfaction scores stay in step with them."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from core.admin import ReadOnlyAdminMixin
from feedback.models import Comparison, Conversation, Feedback, Message, MessageStep, UserSatisfaction


class MessageInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Message
    fields = ["link", "role", "short_content", "status", "model_version", "token_count", "created_at"]
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
    list_display = ["id", "role", "short_content", "conversation", "status", "model_version", "created_at"]
    list_select_related = ["conversation", "model_version"]
    list_filter = ["role", "status", "model_version"]
    search_fields = ["id", "content", "conversation__user__username"]
    inlines = [StepInline]

    @admin.display(description="content")
    def short_content(self, obj: Message) -> str:
        return obj.content[:80]


@admin.register(Feedback)
class FeedbackAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
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
