"""What the training app adds to a version's page in the registry (``models_registry.extensions``):
the monitor's decisions about it."""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.template.loader import render_to_string

from models_registry.extensions import VersionSection, register_version_section
from models_registry.models import ModelVersion
from training.models import MonitorDecision
from training.monitor.service import decision_payload

SHOWN = 20


def decisions_about(version: ModelVersion) -> QuerySet[MonitorDecision]:
    return (
        MonitorDecision.objects.filter(Q(version=version) | Q(baseline=version))
        .select_related("version", "baseline")
        .order_by("-created_at", "-id")
    )


def decisions_data(version: ModelVersion) -> list[dict[str, Any]]:
    return [decision_payload(d) for d in decisions_about(version)[:SHOWN]]


def decisions_html(request: HttpRequest, version: ModelVersion) -> str:
    decisions = list(decisions_about(version)[:SHOWN])
    return render_to_string(
        "admin/training/monitor_panel.html", {"decisions": decisions, "version": version}, request=request
    )


def register_sections() -> None:
    register_version_section(
        VersionSection(
            name="monitor_decisions",
            title="Monitor decisions",
            data=decisions_data,
            html=decisions_html,
            kinds=(ModelVersion.Kind.POLICY,),
        )
    )
