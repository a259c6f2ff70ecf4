"""What the feedback app adds to a policy version's page in the registry (``models_registry.extensions``):
its analytics, with a chart of the positive rate per day marked with its deploys, canary and rollbacks."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.template.loader import render_to_string

from feedback.analytics import version_analytics
from feedback.charts import markers_for, positive_rate_chart
from models_registry.extensions import VersionSection, register_version_section
from models_registry.models import ModelVersion


def analytics_data(version: ModelVersion) -> dict[str, Any]:
    return version_analytics(version).as_dict()


def analytics_html(request: HttpRequest, version: ModelVersion) -> str:
    analytics = version_analytics(version)
    return render_to_string(
        "admin/feedback/analytics_panel.html",
        {
            "analytics": analytics,
            "total": analytics.total,
            "chart": positive_rate_chart(analytics.days, markers_for(version)),
            "days": analytics.days[-14:],
        },
        request=request,
    )


def register_sections() -> None:
    register_version_section(
        VersionSection(
            name="analytics",
            title="How its answers were received",
            data=analytics_data,
            html=analytics_html,
            kinds=(ModelVersion.Kind.POLICY,),
        )
    )
