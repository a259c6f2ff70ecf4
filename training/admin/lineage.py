"""Lineage on the registry's pages: the training run and dataset a version came from (the registry does
not know this app, so this app adds an inline and a column to it)."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from core.admin import ReadOnlyAdminMixin
from models_registry.admin import register_version_column, register_version_inline
from models_registry.models import ModelVersion
from training.models import DatasetSnapshot, TrainingRun


def _dataset_link(dataset: DatasetSnapshot | None) -> str:
    if dataset is None:
        return "-"
    url = reverse("admin:training_datasetsnapshot_change", args=[dataset.pk])
    return format_html('<a href="{}" title="{}">{}</a>', url, dataset.content_hash, dataset.content_hash[:12])


class LineageInline(ReadOnlyAdminMixin, admin.StackedInline):
    """On a model version's page: the run that trained it and the dataset snapshot it read."""

    model = TrainingRun
    fk_name = "output_version"
    fields = ["run_link", "dataset_link", "base_version", "reward_version", "requested_by", "finished_at"]
    readonly_fields = fields
    extra = 0
    max_num = 1
    verbose_name = "lineage"
    verbose_name_plural = "Lineage (the training run that registered it)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[TrainingRun]:
        return super().get_queryset(request).select_related("dataset", "base_version", "reward_version", "requested_by")

    @admin.display(description="training run")
    def run_link(self, obj: TrainingRun) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:training_trainingrun_change", args=[obj.pk]), obj)

    @admin.display(description="dataset (content hash)")
    def dataset_link(self, obj: TrainingRun) -> str:
        return _dataset_link(obj.dataset)


@admin.display(description="training run")
def trained_by(version: ModelVersion) -> str:
    try:
        run = version.training_run  # type: ignore[attr-defined]
    except TrainingRun.DoesNotExist:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse("admin:training_trainingrun_change", args=[run.pk]), run)


register_version_inline(LineageInline)
register_version_column(trained_by, select_related=["training_run"])
