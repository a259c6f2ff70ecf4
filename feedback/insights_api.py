"""``GET /api/assistant/insights``: feedback insights as JSON, or one of its tables as CSV
(``?format=csv&table=tags``). Needs the ``feedback.view_insights`` permission: it reads everyone's
feedback."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import BasePermission
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import error_responses
from core.params import is_whole_number
from feedback import insights
from models_registry.models import ModelVersion


class CanViewInsights(BasePermission):
    message = "You need the permission to view feedback insights."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user and request.user.has_perm("feedback.view_insights"))


class CSVRenderer(BaseRenderer):
    """One table (a list of flat objects) as CSV; an error body as a one-row table of its fields."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        rows = data if isinstance(data, list) else [data.get("error", data) if isinstance(data, dict) else data]
        buffer = io.StringIO()
        if rows:
            columns = list(dict.fromkeys(key for row in rows for key in row))
            writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({key: _cell(value) for key, value in row.items()})
        return buffer.getvalue().encode()


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        return "; ".join(str(v) for v in value) if isinstance(value, list) else str(value)
    return value


def _moment(request: Request, name: str, default: datetime, *, end: bool = False) -> datetime:
    raw = request.query_params.get(name)
    if not raw:
        return default
    moment = parse_datetime(raw)
    if moment is None:
        day = parse_date(raw)
        if day is None:
            raise ValidationError({name: ["A date (2026-11-30) or a date and time (2026-11-30T12:00:00Z)."]})
        moment = datetime.combine(day + timedelta(days=1) if end else day, time.min)
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment, UTC)


def filters_from(request: Request) -> insights.Filters:
    now = timezone.now()
    until = _moment(request, "until", now, end=True)
    since = _moment(request, "since", until - timedelta(days=30))
    if since >= until:
        raise ValidationError({"since": ["Must be before until."]})
    version_id = None
    if label := request.query_params.get("version"):
        kind, _, number = label.partition(":")
        version = (
            ModelVersion.objects.filter(kind=kind or "policy", number=number or -1).first()
            if is_whole_number(number)
            else None
        )
        if version is None:
            raise ValidationError({"version": [f"No version {label!r}; give a label such as policy:3."]})
        version_id = version.pk
    return insights.Filters(since=since, until=until, version_id=version_id)


class InsightsApi(GenericAPIView):
    permission_classes = [CanViewInsights]
    renderer_classes = [JSONRenderer, CSVRenderer]

    @extend_schema(
        operation_id="insights_retrieve",
        parameters=[
            OpenApiParameter(
                "since",
                OpenApiTypes.STR,
                description="Start of the window (date or date-time); default 30 days before until.",
            ),
            OpenApiParameter(
                "until", OpenApiTypes.STR, description="End of the window (a date counts whole); default now."
            ),
            OpenApiParameter("version", OpenApiTypes.STR, description="Only this policy version, e.g. policy:3."),
            OpenApiParameter(
                "table", OpenApiTypes.STR, enum=list(insights.TABLES), description="One table only (required for CSV)."
            ),
        ],
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "text/csv"): OpenApiTypes.STR,
            **error_responses({403: "Missing permission."}),
        },
        description="Where users are unhappy: positive rate per version and day, reason tags with their trend,"
        " step ✗ rate by position, topics of rated conversations (unhappiest first), comments of the worst-rated"
        " answers.",
    )
    def get(self, request: Request) -> Response:
        filters = filters_from(request)
        table = request.query_params.get("table")
        if table is not None and table not in insights.TABLES:
            raise ValidationError({"table": [f"One of {', '.join(insights.TABLES)}."]})
        if request.accepted_renderer.format == "csv":
            if table is None:
                raise ValidationError({"table": ["CSV holds one table: choose one with table=."]})
            return Response(insights.TABLES[table](filters))
        if table is not None:
            return Response({"filters": filters.as_dict(), table: insights.TABLES[table](filters)})
        return Response(insights.insights(filters))
