"""The bridge between a Hugging Face / TRL training loop and ``RunHooks``. No Django.

``HooksCallback`` reports progress (throttled to ``hooks.heartbeat_seconds``, and once at the end),
forwards each log as one line, and asks ``hooks.should_stop`` at every step end. The HF ``Trainer``
loop honours ``control.should_training_stop``; TRL 1.12's ``PPOTrainer`` runs its own loop that calls
``on_step_end`` but never reads that flag, so for it (``raise_on_stop=True``) the callback raises
``TrainingStopped`` from ``on_step_end`` instead, which ``train`` catches.
"""

from __future__ import annotations

import math
import time
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from training.ml.progress import Progress, RunHooks

# Shown first in a log line, in this order, when present; other numeric keys follow up to LOG_KEYS_MAX.
LOG_KEYS_FIRST = (
    "loss",
    "learning_rate",
    "lr",
    "grad_norm",
    "accuracy",
    "margin",
    "rewards/accuracies",
    "rewards/margins",
    "kl",
    "objective/scores",
    "objective/kl",
    "objective/rlhf_reward",
    "loss/policy_avg",
    "loss/value_avg",
)
LOG_KEYS_SKIP = {"epoch", "step", "episode", "eps", "total_flos", "num_tokens"}
LOG_KEYS_MAX = 8


class TrainingStopped(Exception):
    """Raised from ``on_step_end`` by a callback with ``raise_on_stop`` when the run is asked to stop."""


def clean_number(value: Any) -> float | int | None:
    """A JSON-safe number: NaN/inf and non-numbers become None; bools are not numbers."""
    if isinstance(value, bool):
        return None
    if not isinstance(value, int | float):
        try:
            value = value.item()  # a 0-d tensor or numpy scalar
        except (AttributeError, ValueError, RuntimeError):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.4g}"


def format_log_line(step: int, total: int, logs: dict[str, Any]) -> str:
    """``step 12/40 loss 0.512 learning_rate 4.10e-05 ...``: the interesting numbers first, a few at most."""
    numbers = {k: v for k, v in ((k, clean_number(v)) for k, v in logs.items()) if v is not None}
    keys = [k for k in LOG_KEYS_FIRST if k in numbers]
    keys += [k for k in numbers if k not in keys and k not in LOG_KEYS_SKIP]
    parts = [f"step {step}/{total}"] + [f"{k} {_fmt(numbers[k])}" for k in keys[:LOG_KEYS_MAX]]
    return " ".join(parts)


class HooksCallback(TrainerCallback):
    """Progress, log lines and cancellation for one run. After training, ``stopped`` says whether the
    run was cancelled, ``latest`` holds the last value of every logged number and ``history`` each log."""

    def __init__(self, hooks: RunHooks, *, raise_on_stop: bool = False, clock: Any = time.monotonic) -> None:
        self.hooks = hooks
        self.raise_on_stop = raise_on_stop
        self.clock = clock
        self.stopped = False
        self.latest: dict[str, float | int] = {}
        self.history: list[dict[str, float | int]] = []
        self._last_report: float | None = None
        self._step = 0
        self._total = 0
        self._epoch = 0.0

    # --- reporting ---------------------------------------------------------------------------------
    def report(self, *, force: bool = False) -> None:
        now = self.clock()
        if not force and self._last_report is not None and now - self._last_report < self.hooks.heartbeat_seconds:
            return
        self._last_report = now
        self.hooks.report(Progress(self._step, self._total, self._epoch, dict(self.latest)))

    def _track(self, state: TrainerState) -> None:
        self._step = int(state.global_step)
        self._total = int(state.max_steps or 0)
        self._epoch = float(state.epoch or 0.0)

    # --- TrainerCallback -----------------------------------------------------------------------------
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._track(state)
        self.hooks.log(f"training started: {self._total} steps")
        self.report(force=True)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._track(state)
        numbers = {k: v for k, v in ((k, clean_number(v)) for k, v in (logs or {}).items()) if v is not None}
        if not numbers:
            return
        self.latest.update(numbers)
        self.history.append({"step": self._step, **numbers})
        self.hooks.log(format_log_line(self._step, self._total, numbers))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._track(state)
        self.report()
        if not self.stopped and self.hooks.should_stop():
            self.stopped = True
            control.should_training_stop = True
            self.hooks.log(f"stop requested: stopping after step {self._step}/{self._total}")
            if self.raise_on_stop:
                raise TrainingStopped()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._track(state)
        self.report(force=True)
