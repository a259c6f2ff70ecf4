"""The run's side of training: heartbeats on the run row, the log tail, and whether to stop."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection
from django.utils import timezone

from training import services
from training.exceptions import RunCancelled
from training.ml.progress import Progress, RunHooks

logger = logging.getLogger(__name__)

# Share of the progress bar each phase fills.
_DATASET_SHARE = 0.05
_TRAIN_SHARE = 0.85


class Reporter:
    """Turns the ML layer's reports into heartbeats on the run row, keeps the log tail, and remembers
    whether the run should stop (cancelled by an operator, or no longer running)."""

    def __init__(self, run_id: int, *, heartbeat_seconds: float, log_lines: int):
        self.run_id = run_id
        self.heartbeat_seconds = heartbeat_seconds
        self.lines: deque[str] = deque(maxlen=log_lines)
        self.stop = False
        self.last_beat = 0.0
        self.metrics: dict[str, Any] = {}

    @property
    def log_tail(self) -> str:
        return "\n".join(self.lines)

    def log(self, line: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {line}")
        logger.info("training run %s: %s", self.run_id, line)

    def beat(self, **fields: Any) -> bool:
        """Heartbeat now; returns whether the run should go on."""
        self.last_beat = time.monotonic()
        if not services.training_run_heartbeat(run_id=self.run_id, log_tail=self.log_tail, **fields):
            self.stop = True
        return not self.stop

    def phase(self, name: str, progress: float) -> None:
        self.log(f"{name} ...")
        if not self.beat(phase=name, progress=progress):
            raise RunCancelled

    def rows_read(self, rows: int) -> None:
        if time.monotonic() - self.last_beat >= self.heartbeat_seconds and not self.beat():
            raise RunCancelled

    def report(self, progress: Progress) -> None:
        self.metrics = {key: value for key, value in progress.metrics.items() if isinstance(value, int | float)}
        self.beat(
            progress=_DATASET_SHARE + _TRAIN_SHARE * progress.fraction,
            step=progress.step,
            total_steps=progress.total_steps,
            metrics={"train": self.metrics},
        )

    def should_stop(self) -> bool:
        if not self.stop and time.monotonic() - self.last_beat >= self.heartbeat_seconds:
            self.beat()
        return self.stop

    def hooks(self) -> RunHooks:
        return RunHooks(
            report=self.report, should_stop=self.should_stop, log=self.log, heartbeat_seconds=self.heartbeat_seconds
        )

    @contextmanager
    def keepalive(self) -> Iterator[None]:
        """Heartbeats from a thread every ``heartbeat_seconds`` for as long as the block runs, so a
        phase that reports nothing for a long time (a big dataset, loading or evaluating a big model)
        is never mistaken for a dead worker by the reaper. The thread only keeps ``heartbeat_at``
        fresh; progress, the log and cancellation stay with the run's own thread.

        Not started when the caller is inside a transaction (a test): the thread's own connection
        would wait for that transaction's locks, and the runner never holds one in a worker."""
        if connection.in_atomic_block:
            yield
            return
        done = threading.Event()

        def beat() -> None:
            try:
                while not done.wait(self.heartbeat_seconds):
                    try:
                        services.training_run_heartbeat(run_id=self.run_id)
                    except Exception:  # the database may be away for a moment; try again next beat
                        logger.warning("training run %s: keepalive heartbeat failed", self.run_id, exc_info=True)
            finally:
                connection.close()

        thread = threading.Thread(target=beat, name=f"training-run-{self.run_id}-keepalive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=30)
