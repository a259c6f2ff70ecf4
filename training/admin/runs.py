"""Admin for training runs and dataset snapshots.

Rows are read-only here: a run changes only through ``training.services`` (start, cancel), called
from the views this admin adds through ``get_urls()``. Active runs' progress cells poll a small
HTML fragment with htmx; the fragment leaves out its polling attributes once the run has finished,
so polling stops by itself.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from core import jsonsafe
from core.admin import ReadOnlyAdminMixin
from training.exceptions import TrainingError
from training.ml.config import KINDS, defaults_for
from training.models import DatasetSnapshot, TrainingRun
from training.processor import DATASETS
from training.services import training_run_cancel, training_run_create

# Shown in the changelist when present, in this order: (section of ``TrainingRun.metrics``, key,
# label). While a run trains, the runner keeps TRL's latest logs under "train" ("loss", DPO's
# "rewards_accuracies", PPO's "mean_score"); at the end "train" has the summary and "eval" the
# evaluation on the held-out split.
KEY_METRICS = (
    ("train", "train_loss", "loss"),
    ("train", "loss", "loss"),
    ("train", "policy_loss", "loss"),
    ("eval", "accuracy", "eval acc"),
    ("eval", "win_rate", "win rate"),
    ("eval", "kl", "kl"),
    ("train", "rewards_accuracies", "acc"),
    ("train", "accuracy", "acc"),
    ("train", "mean_score", "score"),
)
KEY_METRICS_MAX = 3
PROGRESS_TEMPLATE = "admin/training/trainingrun/_progress.html"


def pretty_json(value: Any) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


def headline_metrics(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    shown: list[tuple[str, str]] = []
    labels: set[str] = set()
    for section, key, label in KEY_METRICS:
        part = metrics.get(section) if isinstance(metrics, dict) else None
        value = part.get(key) if isinstance(part, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or label in labels:
            continue
        shown.append((label, f"{value:.4g}"))
        labels.add(label)
    return shown[:KEY_METRICS_MAX]


def render_progress(run: TrainingRun, *, detail: bool = False) -> str:
    """The progress fragment: polls itself every 2 s while the run is active, and no more after."""
    url = reverse("admin:training_trainingrun_progress", args=[run.pk])
    return render_to_string(
        PROGRESS_TEMPLATE,
        {
            "run": run,
            "percent": round(run.progress * 100),
            "poll_url": f"{url}?detail=1" if detail else url,
            "detail": detail,
            "metrics": headline_metrics(run.metrics),
        },
    )


class StartTrainingRunForm(forms.Form):
    kind = forms.ChoiceField(choices=TrainingRun.Kind.choices)
    config = forms.CharField(
        required=False,
        initial="{}",
        widget=forms.Textarea(attrs={"rows": 8, "cols": 60, "class": "vLargeTextField", "spellcheck": "false"}),
        help_text='A JSON object of settings to override, e.g. {"epochs": 2, "learning_rate": 2e-5}. '
        "{} (or nothing) keeps the defaults below.",
    )

    def clean_config(self) -> Any:
        raw = self.cleaned_data["config"].strip()
        if not raw:
            return {}
        try:
            return jsonsafe.loads(raw)
        except jsonsafe.UnsafeJSON as exc:  # also NaN, Infinity: the run's row could not store them
            raise forms.ValidationError(f"The config {exc}.", code="invalid_json") from None

    def add_training_error(self, exc: TrainingError) -> None:
        """The service's per-field messages on the form's fields (unknown names are config keys), and
        its summary message unless it only repeats one of them."""
        shown: set[str] = set()
        for name, field_messages in exc.fields.items():
            for message in field_messages:
                text = message if name in self.fields else f"{name}: {message}"
                self.add_error(name if name in self.fields else "config", text)
                shown.add(text)
        if exc.message not in shown:
            self.add_error(None, exc.message)


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    change_list_template = "admin/training/trainingrun/change_list.html"
    change_form_template = "admin/training/trainingrun/change_form.html"
    list_display = [
        "__str__",
        "status",
        "progress_bar",
        "key_metrics",
        "output_version_link",
        "requested_by",
        "created_at",
    ]
    list_filter = ["kind", "status"]
    list_select_related = ["output_version", "requested_by"]
    search_fields = ["id", "requested_by__username", "worker"]
    date_hierarchy = "created_at"
    actions = ["cancel_runs"]
    fieldsets = [
        (None, {"fields": ["kind", "status", "requested_by", "created_at", "started_at", "finished_at"]}),
        ("Progress", {"fields": ["live_progress", "cancel_requested", "heartbeat_at", "worker", "task_id"]}),
        ("Error", {"fields": ["error_message", "error_detail"], "classes": ["collapse"]}),
        ("Lineage", {"fields": ["dataset_link", "base_version_link", "reward_version_link", "output_version_link"]}),
        ("Config and metrics", {"fields": ["pretty_config", "pretty_metrics"]}),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: TrainingRun | None = None) -> list[str]:
        return [name for _, options in self.fieldsets for name in options["fields"]]

    def has_start_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("training.start_trainingrun")

    # Columns and read-only fields

    @admin.display(description="progress", ordering="progress")
    def progress_bar(self, obj: TrainingRun) -> str:
        return render_progress(obj)

    @admin.display(description="metrics")
    def key_metrics(self, obj: TrainingRun) -> str:
        return format_html_join(", ", "{} {}", headline_metrics(obj.metrics)) or "-"

    @admin.display(description="progress")
    def live_progress(self, obj: TrainingRun) -> str:
        return render_progress(obj, detail=True)

    @admin.display(description="error (technical)")
    def error_detail(self, obj: TrainingRun) -> str:
        return format_html("<pre>{}</pre>", obj.error) if obj.error else "-"

    @admin.display(description="dataset")
    def dataset_link(self, obj: TrainingRun) -> str:
        if obj.dataset is None:
            return "-"
        url = reverse("admin:training_datasetsnapshot_change", args=[obj.dataset_id])
        return format_html('<a href="{}">{}</a>', url, obj.dataset)

    def _version_link(self, version: Any) -> str:
        if version is None:
            return "-"
        url = reverse("admin:models_registry_modelversion_change", args=[version.pk])
        return format_html('<a href="{}">{} ({})</a>', url, version, version.get_status_display())

    @admin.display(description="base version")
    def base_version_link(self, obj: TrainingRun) -> str:
        return self._version_link(obj.base_version)

    @admin.display(description="reward version")
    def reward_version_link(self, obj: TrainingRun) -> str:
        return self._version_link(obj.reward_version)

    @admin.display(description="output version", ordering="output_version")
    def output_version_link(self, obj: TrainingRun) -> str:
        return self._version_link(obj.output_version)

    @admin.display(description="config")
    def pretty_config(self, obj: TrainingRun) -> str:
        return pretty_json(obj.config)

    @admin.display(description="metrics")
    def pretty_metrics(self, obj: TrainingRun) -> str:
        return pretty_json(obj.metrics)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "has_start_permission": self.has_start_permission(request)}
        return super().changelist_view(request, extra_context)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: TrainingRun | None = None,
    ) -> HttpResponse:
        context["can_cancel"] = (
            obj is not None and obj.is_active and not obj.cancel_requested and self.has_start_permission(request)
        )
        return super().render_change_form(request, context, add, change, form_url, obj)

    # Action

    @admin.action(permissions=["start"], description="Cancel selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[TrainingRun]) -> None:
        cancelled = stopping = 0
        for run_id in queryset.order_by("id").values_list("id", flat=True):
            try:
                run = training_run_cancel(run_id=run_id)
            except TrainingError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                continue
            if run.status == TrainingRun.Status.CANCELLED:
                cancelled += 1
            else:
                stopping += 1
        if cancelled or stopping:
            self.message_user(
                request,
                f"Cancelled {cancelled} queued run(s); asked {stopping} running run(s) to stop.",
                messages.SUCCESS,
            )

    # Views added to the admin

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("start/", view(self.start_view), name="training_trainingrun_start"),
            path("<int:run_id>/progress/", view(self.progress_view), name="training_trainingrun_progress"),
            path("<int:run_id>/cancel/", view(self.cancel_view), name="training_trainingrun_cancel"),
            *super().get_urls(),
        ]

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {**self.admin_site.each_context(request), "opts": self.opts, "title": title, **extra}

    def start_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_start_permission(request):
            raise PermissionDenied
        form = StartTrainingRunForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                run = training_run_create(
                    kind=form.cleaned_data["kind"], config=form.cleaned_data["config"], requested_by=request.user
                )
            except TrainingError as exc:
                form.add_training_error(exc)
            else:
                self.message_user(
                    request,
                    f"Queued {run.get_kind_display()} run {run.pk}; a worker will pick it up.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(reverse("admin:training_trainingrun_change", args=[run.pk]))
        defaults = {kind: defaults_for(kind) for kind in KINDS}
        settings_rows = [(name, [defaults[kind][name] for kind in KINDS]) for name in defaults[KINDS[0]]]
        context = self._context(
            request,
            "Start training run",
            form=form,
            kinds=[TrainingRun.Kind(kind).label for kind in KINDS],
            settings_rows=settings_rows,
        )
        return TemplateResponse(request, "admin/training/trainingrun/start.html", context)

    def progress_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        run = TrainingRun.objects.filter(pk=run_id).first()
        if run is None:
            raise Http404(f"Training run {run_id} does not exist.")
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        detail = request.GET.get("detail") == "1"
        response = HttpResponse(render_progress(run, detail=detail))
        if detail and not run.is_active:
            # The detail page polled, so the run was active when it was drawn: reload it once to show
            # the final metrics and output version and drop the Cancel button.
            response["HX-Refresh"] = "true"
        return response

    def cancel_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        if not self.has_start_permission(request):
            raise PermissionDenied
        run = TrainingRun.objects.filter(pk=run_id).first()
        if run is None:
            self.message_user(request, f"Training run {run_id} does not exist.", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:training_trainingrun_changelist"))
        change_url = reverse("admin:training_trainingrun_change", args=[run.pk])
        if request.method != "POST":
            context = self._context(request, f"Cancel {run}?", object=run, change_url=change_url)
            return TemplateResponse(request, "admin/training/trainingrun/cancel_confirmation.html", context)
        try:
            run = training_run_cancel(run_id=run.pk)
        except TrainingError as exc:
            self.message_user(request, exc.message, messages.ERROR)
        else:
            if run.status == TrainingRun.Status.CANCELLED:
                self.message_user(request, f"Cancelled {run}.", messages.SUCCESS)
            else:
                self.message_user(request, f"Asked {run} to stop; its worker stops at the next step.", messages.SUCCESS)
        return HttpResponseRedirect(change_url)


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "short_hash", "rows_summary", "size", "build_seconds", "created_at", "invalidated_at"]
    list_filter = [("invalidated_at", admin.EmptyFieldListFilter)]
    date_hierarchy = "created_at"
    search_fields = ["content_hash", "path"]
    fields = [
        "path",
        "content_hash",
        "size",
        "build_seconds",
        "created_at",
        "invalidated_at",
        "invalidated_reason",
        "training_runs_links",
        "pretty_row_counts",
        "pretty_split",
        "pretty_source",
        "pretty_options",
        "pretty_stats",
    ]
    readonly_fields = fields

    @admin.display(description="content hash", ordering="content_hash")
    def short_hash(self, obj: DatasetSnapshot) -> str:
        return obj.content_hash[:12]

    @admin.display(description="rows (train/test)")
    def rows_summary(self, obj: DatasetSnapshot) -> str:
        counts = obj.row_counts if isinstance(obj.row_counts, dict) else {}
        # In the processor's order: PostgreSQL's jsonb does not keep the order keys were written in.
        names = [name for name in DATASETS if name in counts] + sorted(set(counts) - set(DATASETS))
        return ", ".join(f"{name} {obj.rows(name, 'train')}/{obj.rows(name, 'test')}" for name in names) or "-"

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj: DatasetSnapshot) -> str:
        return filesizeformat(obj.size_bytes)

    @admin.display(description="training runs")
    def training_runs_links(self, obj: DatasetSnapshot) -> str:
        runs = obj.training_runs.order_by("id")
        links = format_html_join(
            ", ", '<a href="{}">{}</a>', ((reverse("admin:training_trainingrun_change", args=[r.pk]), r) for r in runs)
        )
        return links or "-"

    @admin.display(description="row counts")
    def pretty_row_counts(self, obj: DatasetSnapshot) -> str:
        return pretty_json(obj.row_counts)

    @admin.display(description="split")
    def pretty_split(self, obj: DatasetSnapshot) -> str:
        return pretty_json(obj.split)

    @admin.display(description="source")
    def pretty_source(self, obj: DatasetSnapshot) -> str:
        return pretty_json(obj.source)

    @admin.display(description="options")
    def pretty_options(self, obj: DatasetSnapshot) -> str:
        return pretty_json(obj.options)

    @admin.display(description="stats")
    def pretty_stats(self, obj: DatasetSnapshot) -> str:
        return pretty_json(obj.stats)
