"""Idempotency records move to the ``core`` app: keys remembered so far are copied, so a retry of a
request answered before the upgrade still replays its answer."""

from django.db import migrations

FIELDS = ("user_id", "key", "scope", "fingerprint", "status_code", "body", "created_at")


def copy(apps, schema_editor, source_app, target_app):
    source = apps.get_model(source_app, "IdempotencyRecord")
    target = apps.get_model(target_app, "IdempotencyRecord")
    batch = []
    for row in source.objects.values(*FIELDS).iterator(chunk_size=1000):
        batch.append(target(**row))
        if len(batch) == 1000:
            target.objects.bulk_create(batch, ignore_conflicts=True)
            batch = []
    target.objects.bulk_create(batch, ignore_conflicts=True)
    # auto_now_add overwrote created_at on insert; keep the original times, which the TTL purge reads.
    for row in source.objects.values("user_id", "scope", "key", "created_at").iterator(chunk_size=1000):
        target.objects.filter(user_id=row["user_id"], scope=row["scope"], key=row["key"]).update(
            created_at=row["created_at"]
        )


def forwards(apps, schema_editor):
    copy(apps, schema_editor, "feedback", "core")


def backwards(apps, schema_editor):
    copy(apps, schema_editor, "core", "feedback")


class Migration(migrations.Migration):
    dependencies = [
        ("feedback", "0001_initial"),
        ("core", "0001_idempotency_record"),
    ]

    operations = [
        migrations.RunPython(forwards, backwards),
        migrations.DeleteModel(name="IdempotencyRecord"),
    ]
