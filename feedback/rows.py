"""Model instances for rows the feedback app reads or writes by its own SQL (``services.ratings``,
``chat.statements``), held as the ORM holds them after a read or a ``create``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from django.db import connection, models

from feedback.models import Feedback

M = TypeVar("M", bound=models.Model)

FEEDBACK_COLUMNS = (
    "id", "thumbs", "rating", "comment", "tags", "correction", "created_at", "updated_at", "model_version_id",
)  # fmt: skip
"""The columns ``feedback_from`` reads, in its order."""


def stored(instance: M) -> M:
    """``instance`` marked as a stored row (so ``save()`` updates it), as ``Model.from_db`` marks one."""
    instance._state.adding, instance._state.db = False, connection.alias
    return instance


def feedback_from(values: Sequence[Any], **related: Any) -> Feedback | None:
    """The feedback whose ``FEEDBACK_COLUMNS`` are ``values`` (None where its id is NULL: none given),
    with ``related`` (its user, message, step) set."""
    fields = dict(zip(FEEDBACK_COLUMNS, values, strict=True))
    if fields["id"] is None:
        return None
    tags = fields.pop("tags")
    tags = json.loads(tags) if isinstance(tags, str) else tags  # Django has psycopg read jsonb as text
    return stored(Feedback(**related, tags=tags, **fields))
