"""Admin for model versions and their deployment log.

This app knows nothing of the apps above it: a higher app that has something to show with a version
(training shows the run and dataset a version came from) adds an inline to its page with
``register_version_inline`` and a column to the list with ``register_version_column``.

Versions are never added or edited here: every version comes from ``model_version_register`` (training,
``bootstrap_models``, ``register_model``), and every field of one is read-only, so how a version is
served (backend, server, artifact) cannot change behind the audit log; serving it differently means
registering a new version. Statuses change only through the services: bulk actions approve and
reject; deploy and roll back go through a confirmation page with a reason (``<id>/deploy/`` and
``rollback/<kind>/``). The actions need the ``approve_modelversion`` and ``deploy_modelversion``
permissions; the services check them too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import InlineModelAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from core.admin import ReadOnlyAdminMixin
from core.params import is_whole_number
from models_registry.admin import logs  # noqa: F401  (the logs' pages: registered as it is imported)
from models_registry.exceptions import RegistryError
from models_registry.extensions import version_sections
from models_registry.models import DeploymentEvent, ModelVersion
from models_registry.selectors import live_version, rollback_target, running_canary
from models_registry.services import (
    APPROVE_PERMISSION,
    DEPLOY_PERMISSION,
    canary_promote,
    canary_start,
    canary_stop,
    model_version_approve,
    model_version_deploy,
    model_version_reject,
    model_version_rollback,
)

CONFIRM_TEMPLATE = "admin/models_registry/modelversion/confirm.html"


class CanaryForm(forms.Form):
    percent = forms.FloatField(
        min_value=0.1, max_value=99.9, initial=10, label="Share of new conversations (%)", help_text="e.g. 10"
    )
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), max_length=2000, required=False)


class ReasonForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), max_length=2000)

    def __init__(self, *args: Any, required: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].required = required


class DeploymentEventInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = DeploymentEvent
    fields = ["created_at", "from_status", "to_status", "actor_name", "reason"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False
    verbose_name_plural = "Deployment log"

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeploymentEvent]:
        return super().get_queryset(request).select_related("actor")

    @admin.display(description="by")
    def actor_name(self, obj: DeploymentEvent) -> str:
        return obj.actor_label

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Whoever may see a version may see its history.
        return request.user.has_perm("models_registry.view_modelversion") or request.user.has_perm(
            "models_registry.change_modelversion"
        )


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "__str__",
        "kind",
        "number",
        "status",
        "backend",
        "artifact_path",
        "deployed_at",
        "created_at",
    ]
    list_filter = ["kind", "status", "backend"]
    search_fields = ["artifact_path", "model_name"]
    list_select_related = ["parent"]
    inlines: list[type[InlineModelAdmin]] = [DeploymentEventInline]
    # Added by the apps above (register_version_column).
    extra_columns: ClassVar[list[Callable[[ModelVersion], str]]] = []
    extra_select_related: ClassVar[list[str]] = []

    def get_list_display(self, request: HttpRequest) -> Sequence[Any]:
        return [*super().get_list_display(request), *self.extra_columns]

    def get_list_select_related(self, request: HttpRequest) -> Sequence[str]:
        return [*self.list_select_related, *self.extra_select_related]

    actions = ["approve_versions", "reject_versions", "deploy_version", "start_canary", "rollback_kind"]
    change_form_template = "admin/models_registry/modelversion/change_form.html"

    # Permissions of the actions

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(APPROVE_PERMISSION)

    def has_deploy_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(DEPLOY_PERMISSION)

    # Actions

    @admin.action(description="Approve selected candidates", permissions=["approve"])
    def approve_versions(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, model_version_approve, "Approved")

    @admin.action(description="Reject selected versions", permissions=["approve"])
    def reject_versions(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        self._each(request, queryset, model_version_reject, "Rejected")

    @admin.action(description="Deploy the selected version…", permissions=["deploy"])
    def deploy_version(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> HttpResponse | None:
        ids = list(queryset.values_list("id", flat=True)[:2])
        if len(ids) != 1:
            self.message_user(request, "Select exactly one version to deploy.", messages.ERROR)
            return None
        return HttpResponseRedirect(reverse("admin:models_registry_modelversion_deploy", args=[ids[0]]))

    @admin.action(description="Start the selected version as a canary…", permissions=["deploy"])
    def start_canary(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> HttpResponse | None:
        ids = list(queryset.values_list("id", flat=True)[:2])
        if len(ids) != 1:
            self.message_user(request, "Select exactly one approved version to start as a canary.", messages.ERROR)
            return None
        return HttpResponseRedirect(reverse("admin:models_registry_modelversion_canary", args=[ids[0]]))

    @admin.action(description="Roll back the selected kind…", permissions=["deploy"])
    def rollback_kind(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> HttpResponse | None:
        kinds = sorted(set(queryset.values_list("kind", flat=True)))
        if len(kinds) != 1:
            self.message_user(request, "Select versions of one kind to roll back that kind.", messages.ERROR)
            return None
        return HttpResponseRedirect(reverse("admin:models_registry_modelversion_rollback", args=[kinds[0]]))

    def _each(self, request: HttpRequest, queryset: QuerySet[ModelVersion], service: Any, done: str) -> None:
        for version in queryset.order_by("id"):
            try:
                service(version_id=version.pk, actor=request.user, reason="")
            except RegistryError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(request, f"{done} {version.label}.", messages.SUCCESS)

    # Confirmation views

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("<int:version_id>/deploy/", view(self.deploy_view), name="models_registry_modelversion_deploy"),
            path("rollback/<str:kind>/", view(self.rollback_view), name="models_registry_modelversion_rollback"),
            path("<int:version_id>/canary/", view(self.canary_view), name="models_registry_modelversion_canary"),
            path(
                "canary/<str:kind>/<str:action>/",
                view(self.canary_end_view),
                name="models_registry_modelversion_canary_end",
            ),
            *super().get_urls(),
        ]

    def _deploy_target(self, request: HttpRequest, version_id: int) -> ModelVersion | None:
        """The version a deploy-permission view acts on; None (and a message) when it does not exist."""
        if not self.has_deploy_permission(request):
            raise PermissionDenied
        target = ModelVersion.objects.filter(pk=version_id).first()
        if target is None:
            self.message_user(request, f"Model version {version_id} does not exist.", messages.ERROR)
        return target

    def deploy_view(self, request: HttpRequest, version_id: int) -> HttpResponse:
        target = self._deploy_target(request, version_id)
        if target is None:
            return HttpResponseRedirect(reverse("admin:models_registry_modelversion_changelist"))
        back_url = reverse("admin:models_registry_modelversion_change", args=[target.pk])
        form = ReasonForm(request.POST if request.method == "POST" else None, required=False)
        if request.method == "POST" and form.is_valid():
            try:
                version = model_version_deploy(
                    version_id=target.pk, actor=request.user, reason=form.cleaned_data["reason"]
                )
            except RegistryError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(request, f"{version.label} is live.", messages.SUCCESS)
            return HttpResponseRedirect(back_url)
        return self._confirm(
            request,
            title=f"Deploy {target.label}?",
            target=target,
            current=live_version(target.kind),
            form=form,
            submit="Yes, deploy it",
            back_url=back_url,
        )

    def rollback_view(self, request: HttpRequest, kind: str) -> HttpResponse:
        if not self.has_deploy_permission(request):
            raise PermissionDenied
        changelist = reverse("admin:models_registry_modelversion_changelist")
        if kind not in ModelVersion.Kind.values:
            self.message_user(request, f"Unknown model kind {kind!r}.", messages.ERROR)
            return HttpResponseRedirect(changelist)
        form = ReasonForm(request.POST if request.method == "POST" else None, required=True)
        if request.method == "POST" and form.is_valid():
            try:
                version = model_version_rollback(kind=kind, actor=request.user, reason=form.cleaned_data["reason"])
            except RegistryError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                return HttpResponseRedirect(changelist)
            self.message_user(request, f"Rolled back: {version.label} is live again.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:models_registry_modelversion_change", args=[version.pk]))
        return self._confirm(
            request,
            title=f"Roll back the {kind}?",
            target=rollback_target(kind),
            current=live_version(kind),
            form=form,
            submit="Yes, roll back",
            back_url=changelist,
            nothing=f"No retired {kind} version to roll back to.",
        )

    def canary_view(self, request: HttpRequest, version_id: int) -> HttpResponse:
        """Start an approved version as a canary at a share of new conversations."""
        target = self._deploy_target(request, version_id)
        if target is None:
            return HttpResponseRedirect(reverse("admin:models_registry_modelversion_changelist"))
        back_url = reverse("admin:models_registry_modelversion_change", args=[target.pk])
        form = CanaryForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                canary = canary_start(
                    version_id=target.pk,
                    share=form.cleaned_data["percent"] / 100,
                    actor=request.user,
                    reason=form.cleaned_data["reason"],
                )
            except RegistryError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"Started {target.label} as a canary at {canary.share:.0%} of new conversations.",
                    messages.SUCCESS,
                )
            return HttpResponseRedirect(back_url)
        return self._confirm(
            request,
            title=f"Start {target.label} as a canary?",
            target=target,
            current=live_version(target.kind),
            form=form,
            submit="Yes, start the canary",
            back_url=back_url,
            canary=True,
        )

    def canary_end_view(self, request: HttpRequest, kind: str, action: str) -> HttpResponse:
        """Promote or stop the running canary of ``kind``."""
        if not self.has_deploy_permission(request):
            raise PermissionDenied
        changelist = reverse("admin:models_registry_modelversion_changelist")
        canary = running_canary(kind) if kind in ModelVersion.Kind.values else None
        if canary is None or action not in ("promote", "stop"):
            self.message_user(request, f"No {kind} canary is running.", messages.ERROR)
            return HttpResponseRedirect(changelist)
        back_url = reverse("admin:models_registry_modelversion_change", args=[canary.version_id])
        form = ReasonForm(request.POST if request.method == "POST" else None, required=action == "stop")
        if request.method == "POST" and form.is_valid():
            reason = form.cleaned_data["reason"]
            try:
                if action == "promote":
                    canary_promote(kind=kind, actor=request.user, reason=reason)
                else:
                    canary_stop(kind=kind, actor=request.user, reason=reason)
            except RegistryError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                done = (
                    f"Promoted the canary {canary.version.label}: it is live."
                    if action == "promote"
                    else f"Stopped the canary {canary.version.label}; it is approved again."
                )
                self.message_user(request, done, messages.SUCCESS)
            return HttpResponseRedirect(back_url)
        return self._confirm(
            request,
            title=f"{action.title()} the {kind} canary {canary.version.label}?",
            target=canary.version,
            current=canary.baseline,
            form=form,
            submit=f"Yes, {action} it",
            back_url=back_url,
            canary_action=action,
        )

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        version = ModelVersion.objects.filter(pk=object_id).first() if is_whole_number(object_id) else None
        extra: dict[str, Any] = {}
        if version is not None:
            extra = {
                "panels": [
                    (section.title, section.html(request, version))
                    for section in version_sections(version)
                    if section.html is not None
                ],
                "canary": running_canary(version.kind),
                "canaries": version.canaries.select_related("baseline").order_by("-started_at")[:10],
                "rollback_to": rollback_target(version.kind) if version.status == ModelVersion.Status.LIVE else None,
                "can_deploy": self.has_deploy_permission(request),
            }
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})

    def _confirm(self, request: HttpRequest, **context: Any) -> HttpResponse:
        full = {**self.admin_site.each_context(request), "opts": self.opts, **context}
        return TemplateResponse(request, CONFIRM_TEMPLATE, full)


def register_version_inline(inline: type[InlineModelAdmin]) -> None:
    """Show ``inline`` on every version's page, below the deployment log (for apps above this one)."""
    if inline not in ModelVersionAdmin.inlines:
        ModelVersionAdmin.inlines = [*ModelVersionAdmin.inlines, inline]


def register_version_column(column: Callable[[ModelVersion], str], *, select_related: Sequence[str] = ()) -> None:
    """Add ``column`` (an ``@admin.display`` function of a version) to the version list, with the
    relations it reads joined in the list's one query."""
    if column not in ModelVersionAdmin.extra_columns:
        ModelVersionAdmin.extra_columns = [*ModelVersionAdmin.extra_columns, column]
        ModelVersionAdmin.extra_select_related = [*ModelVersionAdmin.extra_select_related, *select_related]
