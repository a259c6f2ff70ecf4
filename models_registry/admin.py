"""Admin for model versions. A version's lineage (the training run that registered it and the dataset
it read) is shown through the reverse ``training_run`` accessor, by name only: this app does not
import the training app, which depends on it."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import ObjectDoesNotExist
from django.urls import reverse
from django.utils.html import format_html

from models_registry.models import ModelVersion


def _training_run(obj: ModelVersion) -> Any:
    try:
        return obj.training_run  # type: ignore[attr-defined]
    except ObjectDoesNotExist:
        return None


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "kind",
        "number",
        "status",
        "backend",
        "artifact_path",
        "trained_by",
        "deployed_at",
        "created_at",
    ]
    list_filter = ["kind", "status", "backend"]
    search_fields = ["artifact_path", "model_name"]
    list_select_related = ["parent", "training_run"]
    readonly_fields = ["created_at", "deployed_at", "checksums", "load_error", "trained_by", "dataset_hash"]

    @admin.display(description="training run")
    def trained_by(self, obj: ModelVersion) -> str:
        run = _training_run(obj)
        if run is None:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("admin:training_trainingrun_change", args=[run.pk]), run)

    @admin.display(description="dataset hash")
    def dataset_hash(self, obj: ModelVersion) -> str:
        run = _training_run(obj)
        if run is None or run.dataset_id is None:
            return "-"
        dataset = run.dataset
        url = reverse("admin:training_datasetsnapshot_change", args=[dataset.pk])
        return format_html('<a href="{}" title="{}">{}</a>', url, dataset.content_hash, dataset.content_hash[:12])
