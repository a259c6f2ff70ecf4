"""Charts drawn on the server as SVG: no script and nothing from a CDN.

``positive_rate_chart`` draws a version's positive rate per day, its Wilson 95% band, and a marker for
each deploy, canary, promotion, rollback and retirement of the version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from feedback.analytics import Day
from models_registry.models import DeploymentEvent, ModelVersion

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 22, 44
COLOURS = {
    "deployed": "#2e7d32",
    "promoted": "#2e7d32",
    "rolled back to": "#c62828",
    "canary": "#ef6c00",
    "canary stopped": "#ad1457",
    "retired": "#616161",
}


@dataclass(frozen=True)
class Marker:
    at: datetime
    label: str  # a key of COLOURS
    title: str  # the tooltip: who, why


def markers_for(version: ModelVersion) -> list[Marker]:
    """The version's deploys, canary start and stop, promotion, rollbacks and retirement."""
    markers = []
    events = DeploymentEvent.objects.filter(version=version).select_related("actor").order_by("created_at", "id")
    for event in events:
        label = _marker_label(event.from_status, event.to_status)
        if label:
            title = f"{label} {event.created_at:%Y-%m-%d %H:%M} by {event.actor_label}: {event.reason}"
            markers.append(Marker(event.created_at, label, title))
    return markers


def _marker_label(from_status: str, to_status: str) -> str:
    status = ModelVersion.Status
    if to_status == status.LIVE:
        went_live: dict[str, str] = {status.CANARY: "promoted", status.RETIRED: "rolled back to"}
        return went_live.get(from_status, "deployed")
    if to_status == status.CANARY:
        return "canary"
    if from_status == status.CANARY and to_status == status.APPROVED:
        return "canary stopped"
    if to_status == status.RETIRED:
        return "retired"
    return ""


def positive_rate_chart(days: list[Day], markers: list[Marker]) -> SafeString:
    rated = [day for day in days if day.positive.value is not None]
    dates = [day.day for day in rated] + [marker.at.date() for marker in markers]
    if not dates:
        return mark_safe('<p class="help">No ratings yet: nothing to chart.</p>')
    first, last = min(dates), max(dates)
    span = (last - first).days  # the chart shows span + 1 days
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(when: date | datetime) -> float:
        """A day's rate sits at its noon; an event at its time of day."""
        if isinstance(when, datetime):
            offset = (when.date() - first).days + (when.hour * 3600 + when.minute * 60) / 86400
        else:
            offset = (when - first).days + 0.5
        return LEFT + plot_w * offset / (span + 1)

    def y(rate: float) -> float:
        return TOP + plot_h * (1 - rate)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}"'
        ' role="img" aria-label="Positive rate per day, with its 95% interval and deployment markers"'
        ' class="positive-rate-chart" font-family="sans-serif" font-size="11">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ddd"/>',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e5e5e5"/>'
            f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" fill="#555">{tick:.0%}</text>'
        )
    for label_day in _date_ticks(first, last):
        parts.append(
            f'<text x="{x(label_day):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" fill="#555">'
            f"{label_day:%b %d}</text>"
        )
    if span <= 62:  # day boundaries, where there is room for them
        for offset in range(1, span + 1):
            boundary = LEFT + plot_w * offset / (span + 1)
            parts.append(
                f'<line x1="{boundary:.1f}" x2="{boundary:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#f0f0f0"/>'
            )
    if rated:
        upper = " ".join(f"{x(d.day):.1f},{y(d.positive.high or 0):.1f}" for d in rated)
        lower = " ".join(f"{x(d.day):.1f},{y(d.positive.low or 0):.1f}" for d in reversed(rated))
        parts.append(f'<polygon points="{upper} {lower}" fill="#90caf9" fill-opacity="0.35" stroke="none"/>')
        line = " ".join(f"{x(d.day):.1f},{y(d.positive.value or 0):.1f}" for d in rated)
        parts.append(f'<polyline points="{line}" fill="none" stroke="#1565c0" stroke-width="2"/>')
        for d in rated:
            p = d.positive
            parts.append(  # the day's interval as a whisker, visible where the band is a single point
                f'<line x1="{x(d.day):.1f}" x2="{x(d.day):.1f}" y1="{y(p.low or 0):.1f}" y2="{y(p.high or 0):.1f}"'
                ' stroke="#1565c0" stroke-opacity="0.5" stroke-width="1.5"/>'
            )
            title = (
                f"{d.day:%Y-%m-%d}: {p.value:.0%} positive of {p.n} ratings"
                f" (95% interval {p.low:.0%} to {p.high:.0%}); {d.served} answers served"
            )
            parts.append(
                f'<circle cx="{x(d.day):.1f}" cy="{y(p.value or 0):.1f}" r="3.5" fill="#1565c0">'
                f"<title>{escape(title)}</title></circle>"
            )
    for marker in markers:
        colour = COLOURS.get(marker.label, "#333")
        mx = x(marker.at)
        parts.append(
            f'<g class="marker marker-{marker.label.replace(" ", "-")}"><title>{escape(marker.title)}</title>'
            f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="{colour}"'
            ' stroke-width="1.5" stroke-dasharray="4 3"/>'
            f'<text x="{mx + 3:.1f}" y="{TOP - 6}" fill="{colour}">{escape(marker.label)}</text></g>'
        )
    parts.append(
        f'<text x="{LEFT}" y="{HEIGHT - 6}" fill="#555">Positive rate per day of the answer (line), its 95% Wilson'
        " interval (band); dashed: deploys, canary, rollbacks.</text></svg>"
    )
    return mark_safe("".join(parts))


def _date_ticks(first: date, last: date, most: int = 8) -> list[date]:
    span = (last - first).days
    step = max(1, -(-span // most))
    return [first + timedelta(days=offset) for offset in range(0, span + 1, step)]


PALETTE = ["#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#c62828", "#00838f", "#5d4037", "#ad1457"]


def rate_lines_chart(rows: list[dict[str, Any]], *, label: str) -> SafeString:
    """One line per version of a daily rate (rows: version, day, rate_value, ratings), 0-100%."""
    series: dict[str, list[tuple[date, float, int]]] = {}
    for row in rows:
        if row["rate_value"] is not None:
            series.setdefault(row["version"], []).append(
                (date.fromisoformat(row["day"]), row["rate_value"], row["ratings"])
            )
    if not series:
        return mark_safe('<p class="help">No ratings in this window.</p>')
    days = sorted({day for points in series.values() for day, _, _ in points})
    first, span = days[0], (days[-1] - days[0]).days
    plot_w, plot_h = WIDTH - LEFT - RIGHT - 90, HEIGHT - TOP - BOTTOM

    def x(day: date) -> float:
        return LEFT + plot_w * ((day - first).days + 0.5) / (span + 1)

    def y(rate: float) -> float:
        return TOP + plot_h * (1 - rate)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}"'
        f' role="img" aria-label="{escape(label)}" class="rate-lines-chart" font-family="sans-serif" font-size="11">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ddd"/>',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e5e5e5"/>'
            f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" fill="#555">{tick:.0%}</text>'
        )
    for tick_day in _date_ticks(first, days[-1]):
        at = f'x="{x(tick_day):.1f}" y="{TOP + plot_h + 16}"'
        parts.append(f'<text {at} text-anchor="middle" fill="#555">{tick_day:%b %d}</text>')
    for n, (version, points) in enumerate(sorted(series.items())):
        colour = PALETTE[n % len(PALETTE)]
        line = " ".join(f"{x(day):.1f},{y(rate):.1f}" for day, rate, _ in points)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for day, rate, ratings in points:
            title = f"{version} {day:%Y-%m-%d}: {rate:.0%} positive of {ratings} ratings"
            at = f'cx="{x(day):.1f}" cy="{y(rate):.1f}"'
            parts.append(f'<circle {at} r="3" fill="{colour}"><title>{escape(title)}</title></circle>')
        parts.append(f'<text x="{LEFT + plot_w + 8}" y="{TOP + 14 + 16 * n}" fill="{colour}">{escape(version)}</text>')
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 6}" fill="#555">{escape(label)}</text></svg>')
    return mark_safe("".join(parts))


def bars_chart(rows: list[tuple[str, float, str]], *, label: str, percent: bool = True) -> SafeString:
    """Horizontal bars: (name, value, tooltip) rows; values in 0-1 when ``percent``."""
    if not rows:
        return mark_safe('<p class="help">Nothing in this window.</p>')
    bar, gap, name_w = 18, 6, 150
    height = TOP + len(rows) * (bar + gap) + 28
    top = max((value for _, value, _ in rows), default=1.0) or 1.0
    scale = 1.0 if percent else top
    plot_w = WIDTH - name_w - RIGHT - 60
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}"'
        f' role="img" aria-label="{escape(label)}" class="bars-chart" font-family="sans-serif" font-size="11">'
    ]
    for n, (name, value, tooltip) in enumerate(rows):
        y = TOP + n * (bar + gap)
        width = plot_w * value / scale if scale else 0
        shown = f"{value:.0%}" if percent else f"{value:g}"
        parts.append(
            f"<g><title>{escape(tooltip)}</title>"
            f'<text x="{name_w - 6}" y="{y + bar - 5}" text-anchor="end" fill="#333">{escape(name)}</text>'
            f'<rect x="{name_w}" y="{y}" width="{width:.1f}" height="{bar}" fill="#1565c0" fill-opacity="0.75"/>'
            f'<text x="{name_w + width + 4:.1f}" y="{y + bar - 5}" fill="#333">{shown}</text></g>'
        )
    parts.append(f'<text x="{name_w}" y="{height - 8}" fill="#555">{escape(label)}</text></svg>')
    return mark_safe("".join(parts))
