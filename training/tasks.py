"""Celery tasks of the training app: load by id, claim, call one service.

The leaf of the app: it imports the runner and the services, and nothing imports it (services send
its tasks by name, ``services.EXECUTE_TASK``), so there is no import cycle through it."""

from __future__ import annotations

import logging
import os
import socket

from celery import Task, shared_task

from training import runner, services
from training.cycle import service as cycle_service
from training.models import Cycle
from training.monitor.service import monitor_pass

logger = logging.getLogger(__name__)


@shared_task(name="training.tasks.training_run_execute", bind=True, acks_late=True)
def training_run_execute(self: Task, run_id: int) -> str:
    """Run a queued training run (routed to the ``training`` queue). A redelivered message finds the
    run claimed or finished and does nothing."""
    return runner.execute(run_id, worker=f"{socket.gethostname()}:{os.getpid()}", task_id=self.request.id or "")


@shared_task(name="training.tasks.training_runs_reap")
def training_runs_reap() -> int:
    """Fail running runs whose heartbeat went stale, and send the queued runs the broker never got
    (periodic, on the default queue). Returns how many runs were failed."""
    reaped = services.training_runs_reap()
    try:
        services.training_runs_resend()
    except Exception:  # the reap above is done; the next pass sends them
        logger.exception("could not send the queued runs the broker never got")
    return len(reaped)


@shared_task(name="training.tasks.monitor_versions")
def monitor_versions() -> list[str]:
    """One monitor pass (periodic, on the default queue): every decision taken, as ``label: decision``."""
    return [f"{d.version.label}: {d.decision}" for d in monitor_pass()]


@shared_task(name="training.tasks.cycle_advance")
def cycle_advance(cycle_id: int) -> str:
    """Move a cycle to its next stage when it can (sent when a stage's run ends)."""
    return cycle_service.cycle_advance(cycle_id).status


@shared_task(name="training.tasks.cycles_sweep")
def cycles_sweep() -> list[str]:
    """Periodic: advance active cycles (approvals and canary outcomes happen outside them), and start
    one when the schedule or the amount of new feedback says so."""
    return cycle_service.cycles_sweep()


@shared_task(name="training.tasks.cycle_scheduled")
def cycle_scheduled() -> str:
    """Start a cycle on CYCLE_SCHEDULE (beat), unless one is active."""
    cycle = cycle_service.cycle_start_if_due(Cycle.Trigger.SCHEDULE)
    return f"cycle {cycle.pk} started" if cycle else "not started"
