"""Migration operations the apps share.

``AddIndexConcurrentlyWherePossible``: on PostgreSQL, ``CREATE INDEX CONCURRENTLY`` (writes to the
table go on while the index builds: a plain ``CREATE INDEX`` blocks them, which on a big table of
chat messages stops every chat for as long as the build takes); elsewhere (SQLite), a plain index.
The migration holding it must say ``atomic = False``, and should hold nothing else: a concurrent
build that fails or is interrupted leaves the migration unrecorded and an INVALID index behind, so
running ``migrate`` again drops that index and builds it anew (and an index already there and valid,
from a database that applied an earlier form of the migration, is kept)."""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db.migrations.operations import AddIndex


class AddIndexConcurrentlyWherePossible(AddIndexConcurrently):
    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor != "postgresql":
            AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)
            return
        if not schema_editor.collect_sql:  # sqlmigrate prints the SQL without looking at the database
            valid = self._existing_index_valid(schema_editor)
            if valid:
                return
            if valid is not None:  # left INVALID by a build that failed or was interrupted
                schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {schema_editor.quote_name(self.index.name)}")
        super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)

    def _existing_index_valid(self, schema_editor: Any) -> bool | None:
        """Whether an index of this name is there and valid (None: not there)."""
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = %s AND pg_table_is_visible(c.oid)",
                [self.index.name],
            )
            row = cursor.fetchone()
        return None if row is None else bool(row[0])
