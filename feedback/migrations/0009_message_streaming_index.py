# Written by hand on 2026-12-01: the index of answers streaming, built concurrently.

from django.db import migrations, models

from core.migration_operations import AddIndexConcurrentlyWherePossible


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run in a transaction. The index covers a few rows (answers
    # streaming now), but building it reads the whole messages table: a plain CREATE INDEX would
    # block every new message (every chat) for as long as that takes on a big table. Alone in its
    # migration, so that a build that fails can simply be run again (core.migration_operations).
    atomic = False

    dependencies = [
        ('feedback', '0008_message_heartbeat'),
    ]

    operations = [
        AddIndexConcurrentlyWherePossible(
            model_name='message',
            index=models.Index(condition=models.Q(('status', 'streaming')), fields=['created_at'], name='message_streaming'),
        ),
    ]
