"""The database's clock, for times written and compared by several machines.

A heartbeat stamped by one process and judged stale by another (a server and a Celery worker, two
workers) must be stamped and measured with one clock, or a process whose clock runs ahead reaps live
work. Stamp with ``Now()`` (django.db.models.functions) and compare with ``db_ago``."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import DateTimeField, DurationField, ExpressionWrapper, Value
from django.db.models.functions import Now


def db_ago(delta: timedelta) -> ExpressionWrapper:
    """The database's ``now()`` minus ``delta``: a cutoff to filter on (``heartbeat_at__lt=db_ago(..)``)."""
    return ExpressionWrapper(Now() - Value(delta, DurationField()), output_field=DateTimeField())
