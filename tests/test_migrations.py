"""Data migrations keep what was there: feedback and comparisons given before the versions were copied
onto them get their answers' versions; idempotency keys move to ``core`` with their times."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)


def migrate(targets: list[tuple[str, str]]):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_versions_are_copied_onto_existing_feedback_and_comparisons():
    old = migrate([("feedback", "0003_canary_arms_and_version_index")])
    user = old.get_model("auth", "User").objects.create(username="before")
    version = old.get_model("models_registry", "ModelVersion").objects.create(kind="policy", number=1)
    conversation = old.get_model("feedback", "Conversation").objects.create(user=user)
    message = old.get_model("feedback", "Message")
    turn = message.objects.create(conversation=conversation, role="user", content="q")
    a = message.objects.create(conversation=conversation, role="assistant", parent=turn, model_version=version)
    b = message.objects.create(conversation=conversation, role="assistant", parent=turn)
    old.get_model("feedback", "Feedback").objects.create(user=user, message=a, thumbs="up")
    old.get_model("feedback", "Comparison").objects.create(user=user, prompt=turn, chosen=a, rejected=b, pair_key="k")

    new = migrate([("feedback", "0004_versions_on_feedback_and_comparisons")])

    assert new.get_model("feedback", "Feedback").objects.get().model_version_id == version.pk
    comparison = new.get_model("feedback", "Comparison").objects.get()
    assert (comparison.chosen_version_id, comparison.rejected_version_id) == (version.pk, None)
    migrate(executor_leaf_nodes())


def test_idempotency_keys_move_to_core_with_their_times():
    old = migrate([("feedback", "0001_initial"), ("core", "0001_idempotency_record")])
    user = old.get_model("auth", "User").objects.create(username="keys")
    then = timezone.now() - timedelta(hours=5)
    record = old.get_model("feedback", "IdempotencyRecord").objects.create(
        user=user, key="k-1", scope="feedback", fingerprint="f", status_code=201, body={"id": 7}
    )
    old.get_model("feedback", "IdempotencyRecord").objects.filter(pk=record.pk).update(created_at=then)

    new = migrate([("feedback", "0002_idempotency_moves_to_core")])

    moved = new.get_model("core", "IdempotencyRecord").objects.get()
    assert (moved.key, moved.scope, moved.status_code, moved.body, moved.created_at) == (
        "k-1",
        "feedback",
        201,
        {"id": 7},
        then,
    )
    migrate(executor_leaf_nodes())


def executor_leaf_nodes() -> list[tuple[str, str]]:
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


@pytest.mark.postgres
def test_the_streaming_answers_index_is_built_without_blocking_writes():
    """On PostgreSQL the partial index of answers streaming is built CONCURRENTLY (a plain CREATE INDEX
    blocks every new message while it reads the whole table), outside a transaction."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("sqlmigrate", "feedback", "0009_message_streaming_index", stdout=out)
    sql = out.getvalue()
    assert 'CREATE INDEX CONCURRENTLY "message_streaming"' in sql
    assert "BEGIN" not in sql
    out = StringIO()
    call_command("sqlmigrate", "feedback", "0009_message_streaming_index", "--backwards", stdout=out)
    assert 'DROP INDEX CONCURRENTLY IF EXISTS "message_streaming"' in out.getvalue()


def streaming_index() -> tuple[bool, str] | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c "
            "ON c.oid = i.indexrelid WHERE c.relname = 'message_streaming'"
        )
        return cursor.fetchone()


@pytest.mark.postgres
def test_migrate_again_after_a_failed_concurrent_build_rebuilds_the_index_and_keeps_a_good_one():
    """A CREATE INDEX CONCURRENTLY that fails leaves the migration unrecorded and the index INVALID:
    migrating again drops it and builds it anew. An index already there and valid (a database that
    applied the index in an earlier form of 0008) is kept, not an error."""
    migrate([("feedback", "0008_message_heartbeat")])
    assert streaming_index() is None
    with connection.cursor() as cursor:  # what an interrupted build leaves: an invalid index
        cursor.execute('CREATE INDEX "message_streaming" ON "feedback_message" ("id")')
        cursor.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'message_streaming'::regclass")
    assert streaming_index()[0] is False

    migrate(executor_leaf_nodes())
    valid, definition = streaming_index()
    assert valid
    assert "(created_at) WHERE ((status)::text = 'streaming'::text)" in definition

    migrate([("feedback", "0008_message_heartbeat")])
    with connection.cursor() as cursor:  # valid, built before this migration ran
        cursor.execute(
            """CREATE INDEX "message_streaming" ON "feedback_message" ("created_at") WHERE "status" = 'streaming'"""
        )
    migrate(executor_leaf_nodes())
    assert streaming_index()[0] is True
