"""How ML code reports to whoever runs it (a Celery task, a script, a test) without knowing who it is.

``RunHooks.report`` is called with the step count and the latest metrics at most every
``heartbeat_seconds`` and once at the end; the caller turns it into a heartbeat, a progress bar and
stored metrics. ``should_stop`` is asked at every step (keep it cheap; the caller rate-limits its own
database reads); when it says yes, training stops at the end of that step and the result says
``stopped``. ``log`` takes one human-readable line at a time. No Django.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps > 0 else 0.0


@dataclass
class RunHooks:
    report: Callable[[Progress], None] = lambda _progress: None
    should_stop: Callable[[], bool] = lambda: False
    log: Callable[[str], None] = lambda _line: None
    heartbeat_seconds: float = 5.0


@dataclass
class TrainResult:
    """What a trainer hands back: the output folder holds a complete checkpoint unless ``stopped``."""

    metrics: dict[str, Any]
    steps: int
    stopped: bool = False
