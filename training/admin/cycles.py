"""Admin for improvement cycles: start one, follow it (a stage timeline, its gates, a live progress bar),
cancel it. Rows are read-only: a cycle changes only through ``training.cycle.service``."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from core import jsonsafe
from core.admin import ReadOnlyAdminMixin
from core.params import is_whole_number
from training.cycle import service
from training.exceptions import TrainingError
from training.models import Cycle

PROGRESS_TEMPLATE = "admin/training/cycle/_progress.html"


def render_cycle_progress(cycle: Cycle, *, detail: bool = False) -> str:
    """The progress fragment: polls itself every 2 s while the cycle trains, and no more after."""
    url = reverse("admin:training_cycle_progress", args=[cycle.pk])
    return render_to_string(
        PROGRESS_TEMPLATE,
        {
            "cycle": cycle,
            "percent": round(service.cycle_progress(cycle) * 100),
            "poll_url": f"{url}?detail=1" if detail else url,
            "polling": cycle.status == Cycle.Status.RUNNING,
            "detail": detail,
        },
    )


class StartCycleForm(forms.Form):
    policy = forms.ChoiceField(
        choices=[("ppo", "PPO, scored by the new reward model"), ("dpo", "DPO"), ("kto", "KTO")],
        initial="ppo",
        help_text="How the policy learns from the feedback.",
    )
    config = forms.CharField(
        required=False,
        initial="{}",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60, "class": "vLargeTextField", "spellcheck": "false"}),
        help_text='Settings of its runs to override, e.g. {"reward": {"epochs": 2}, "policy": {"beta": 0.2}}.',
    )

    def clean_config(self) -> Any:
        raw = self.cleaned_data["config"].strip()
        if not raw:
            return {}
        try:
            value = jsonsafe.loads(raw)
        except jsonsafe.UnsafeJSON as exc:  # also NaN, Infinity: the runs' rows could not store them
            raise forms.ValidationError(f"The config {exc}.", code="invalid_json") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('A JSON object, e.g. {"reward": {"epochs": 2}}.')
        return value


@admin.register(Cycle)
class CycleAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    change_list_template = "admin/training/cycle/change_list.html"
    change_form_template = "admin/training/cycle/change_form.html"
    list_display = ["__str__", "trigger", "status", "progress_bar", "candidate", "new_ratings", "created_at", "outcome"]
    list_filter = ["status", "policy_kind", "trigger"]
    list_select_related = ["reward_run", "policy_run", "candidate", "canary"]
    date_hierarchy = "created_at"
    fields = ["policy_kind", "trigger", "status", "stage", "requested_by", "created_at", "finished_at", "reason"]
    readonly_fields = fields

    def has_start_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("training.start_cycle")

    @admin.display(description="progress")
    def progress_bar(self, obj: Cycle) -> str:
        return render_cycle_progress(obj)

    @admin.display(description="outcome")
    def outcome(self, obj: Cycle) -> str:
        return obj.reason[:120] or "-"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "has_start_permission": self.has_start_permission(request)}
        return super().changelist_view(request, extra_context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        cycle = (
            Cycle.objects.select_related("reward_run", "policy_run", "candidate", "canary").filter(pk=object_id).first()
            if is_whole_number(object_id)
            else None
        )
        extra: dict[str, Any] = {}
        if cycle is not None:
            extra = {
                "cycle": cycle,
                "timeline": _timeline(cycle),
                "progress": render_cycle_progress(cycle, detail=True),
                "can_cancel": cycle.is_active and self.has_start_permission(request),
            }
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("start/", view(self.start_view), name="training_cycle_start"),
            path("<int:cycle_id>/progress/", view(self.progress_view), name="training_cycle_progress"),
            path("<int:cycle_id>/cancel/", view(self.cancel_view), name="training_cycle_cancel"),
            *super().get_urls(),
        ]

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {**self.admin_site.each_context(request), "opts": self.opts, "title": title, **extra}

    def start_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_start_permission(request):
            raise PermissionDenied
        form = StartCycleForm(
            request.POST if request.method == "POST" else None, initial={"policy": settings.CYCLE_POLICY_KIND}
        )
        if request.method == "POST" and form.is_valid():
            try:
                cycle = service.cycle_create(
                    policy_kind=form.cleaned_data["policy"],
                    config=form.cleaned_data["config"],
                    requested_by=request.user,
                )
            except TrainingError as exc:
                form.add_error(None, exc.message)
                for name, field_messages in exc.fields.items():
                    for message in field_messages:
                        form.add_error("config", f"{name}: {message}")
            else:
                self.message_user(request, f"Started {cycle}; it moves on as its runs finish.", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:training_cycle_change", args=[cycle.pk]))
        context = self._context(
            request, "Start an improvement cycle", form=form, auto_approve=settings.CYCLE_AUTO_APPROVE
        )
        return TemplateResponse(request, "admin/training/cycle/start.html", context)

    def progress_view(self, request: HttpRequest, cycle_id: int) -> HttpResponse:
        cycle = Cycle.objects.select_related("reward_run", "policy_run").filter(pk=cycle_id).first()
        if cycle is None:
            raise Http404(f"Cycle {cycle_id} does not exist.")
        if not self.has_view_permission(request, cycle):
            raise PermissionDenied
        detail = request.GET.get("detail") == "1"
        response = HttpResponse(render_cycle_progress(cycle, detail=detail))
        if detail and cycle.status != Cycle.Status.RUNNING:
            response["HX-Refresh"] = "true"  # the stage changed for good: show the new timeline and gates
        return response

    def cancel_view(self, request: HttpRequest, cycle_id: int) -> HttpResponse:
        if not self.has_start_permission(request):
            raise PermissionDenied
        change_url = reverse("admin:training_cycle_change", args=[cycle_id])
        if request.method != "POST":
            cycle = Cycle.objects.filter(pk=cycle_id).first()
            if cycle is None:
                raise Http404(f"Cycle {cycle_id} does not exist.")
            context = self._context(request, f"Cancel {cycle}?", object=cycle, change_url=change_url)
            return TemplateResponse(request, "admin/training/cycle/cancel_confirmation.html", context)
        try:
            cycle = service.cycle_cancel(cycle_id=cycle_id, reason=f"cancelled by {request.user.get_username()}")
        except TrainingError as exc:
            self.message_user(request, exc.message, messages.ERROR)
        else:
            self.message_user(request, f"Cancelled {cycle}.", messages.SUCCESS)
        return HttpResponseRedirect(change_url)


def _timeline(cycle: Cycle) -> list[dict[str, Any]]:
    """Every stage in order: those reached with their status, times and detail; the rest to come."""
    reached = {stage["name"]: stage for stage in cycle.stages}
    rows = []
    for stage in Cycle.Stage:
        if stage == Cycle.Stage.DONE:
            continue
        entry = reached.get(stage.value)
        rows.append(
            {
                "label": stage.label,
                "status": entry["status"] if entry else ("skipped" if not cycle.is_active else "to come"),
                "started_at": entry["started_at"][:19].replace("T", " ") if entry else "",
                "finished_at": (entry["finished_at"] or "")[:19].replace("T", " ") if entry else "",
                "detail": entry["detail"] if entry else "",
                "link": _stage_link(cycle, stage),
            }
        )
    return rows


def _stage_link(cycle: Cycle, stage: str) -> str:
    if stage == Cycle.Stage.REWARD and cycle.reward_run_id:
        url = reverse("admin:training_trainingrun_change", args=[cycle.reward_run_id])
        return format_html('<a href="{}">{}</a>', url, cycle.reward_run)
    if stage == Cycle.Stage.POLICY and cycle.policy_run_id:
        url = reverse("admin:training_trainingrun_change", args=[cycle.policy_run_id])
        return format_html('<a href="{}">{}</a>', url, cycle.policy_run)
    if stage in (Cycle.Stage.APPROVAL, Cycle.Stage.CANARY) and cycle.candidate_id:
        url = reverse("admin:models_registry_modelversion_change", args=[cycle.candidate_id])
        return format_html('<a href="{}">{}</a>', url, cycle.candidate)
    return ""
