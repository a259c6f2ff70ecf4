"""Migration operations the apps share.

``AddIndexConcurrentlyWherePossible``: on PostgreSQL, ``CREATE INDEX CONCURRENTLY`` (writes to the
table go on while the index builds: a plain ``CREATE INDEX`` blocks them, which on a big table of
chat messages stops every chat for as long as the build takes); elsewhere (SQLite), a plain index.
The migration holding it must say ``atomic = False``."""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db.migrations.operations import AddIndex


class AddIndexConcurrentlyWherePossible(AddIndexConcurrently):
    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)
