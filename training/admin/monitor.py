"""Admin for the monitor's decisions: listed with their figures, read-only (the monitor writes them)."""

from __future__ import annotations

from django.contrib import admin

from core.admin import ReadOnlyAdminMixin
from training.admin.runs import pretty_json
from training.models import MonitorDecision


@admin.register(MonitorDecision)
class MonitorDecisionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Every decision of the monitor, with its figures; read-only (the monitor writes them)."""

    list_display = [
        "created_at",
        "kind",
        "version",
        "baseline",
        "mode",
        "decision",
        "acted",
        "ratings",
        "difference",
        "short_reason",
    ]
    list_filter = ["kind", "mode", "decision", "acted", "version"]
    list_select_related = ["version", "baseline"]
    date_hierarchy = "created_at"
    search_fields = ["reason"]
    fields = [
        "created_at", "kind", "mode", "version", "baseline", "canary", "deployed_at", "decision", "acted",
        "error", "reason", "version_positive", "version_rated", "baseline_positive", "baseline_rated",
        "votes_won", "votes_lost", "votes_tied", "pretty_figures",
    ]  # fmt: skip
    readonly_fields = fields

    @admin.display(description="ratings (positive)")
    def ratings(self, obj: MonitorDecision) -> str:
        return f"{obj.version_rated} ({obj.version_positive}) vs {obj.baseline_rated} ({obj.baseline_positive})"

    @admin.display(description="difference [always-valid interval]")
    def difference(self, obj: MonitorDecision) -> str:
        sequence = obj.figures.get("difference") if isinstance(obj.figures, dict) else None
        if not sequence:
            return "-"
        return f"{sequence['estimate']:+.3f} [{sequence['low']:+.3f}, {sequence['high']:+.3f}]"

    @admin.display(description="why")
    def short_reason(self, obj: MonitorDecision) -> str:
        return obj.reason[:120]

    @admin.display(description="figures")
    def pretty_figures(self, obj: MonitorDecision) -> str:
        return pretty_json(obj.figures)
