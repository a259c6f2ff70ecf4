from __future__ import annotations

from celery import shared_task

from feedback.heartbeat import stale_answers_reap


@shared_task(name="feedback.tasks.stale_answers_reap")
def stale_answers_reap_task() -> int:
    """Store answers whose server process died mid-answer as failed (periodic, on the default queue);
    returns how many."""
    return len(stale_answers_reap())
