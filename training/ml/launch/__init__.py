"""A training run on several processes: ``train_in_processes`` (in the worker) starts them and stands
in for ``train``; ``main`` is what each of them runs. No Django.

**Launcher.** ``python -m torch.distributed.run --standalone --nproc-per-node N -m training.ml.launch
SPEC`` (torchrun). Not ``accelerate launch``: with ``--cpu`` it starts one process (several need
``mpirun`` and a hostfile), and on GPUs its multi-GPU launcher is torchrun itself. torchrun gives each
process ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and a rendezvous address; the TRL trainers' own
``Accelerator`` reads them and picks the backend from the device: gloo on a CPU, NCCL with one GPU a
process (``cuda:LOCAL_RANK``). ``--standalone`` takes a free local port, so runs cannot collide;
``--max-restarts 0``: a process that fails fails the run, and torchrun stops the others (left alone
they would wait forever in the next all-reduce).

**Protocol.** Files in one work folder that ``train_in_processes`` creates and always removes:

- ``spec.json``: what to train (kind, config as a dict, folders, heartbeat), read by ``read_spec``.
- ``events.jsonl``: JSON lines. Rank 0 alone appends ``report``, ``log`` and ``result``; any rank
  that fails appends ``error``. The parent tails the file and calls its ``RunHooks``, so the run row's
  progress bar, heartbeats and log tail work as with one process, and it heartbeats itself meanwhile.
- ``stop``: created by the parent when the run should stop. At every step end rank 0 looks for it and
  its answer is broadcast to all ranks (``distributed.decided_by_main_process``), so every process
  stops after the same step; no rank decides alone, so none is left waiting in a collective.
- ``rank-N.log``: each process's stdout and stderr; ``launcher.log``: torchrun's. A failure's message
  ends with the tail of the failing rank's log (or torchrun's, when a rank died without a word).

Only rank 0 saves the checkpoint (the trainers check ``distributed.is_main_process``), float32
safetensors, as in one process.

**No process outlives the run.** On every way out of ``train_in_processes`` (success, stop, failure,
Celery's soft time limit, any exception) torchrun's process group gets SIGTERM (torchrun then stops
its ranks, each in a session of its own) and SIGKILL after a grace period. Where the worker itself is
killed (Celery's hard time limit), Linux's parent-death signal carries SIGKILL down the chain: the
``--agent`` step of this module sets it and then becomes torchrun (``exec``), and every rank sets it
for itself, so torchrun dies with the worker and the ranks with torchrun.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.ml.config import TrainConfig
from training.ml.distributed import LAUNCHER_PREFIXES, RANK_VARIABLES
from training.ml.launch.protocol import (
    EVENTS_FILE,
    LAUNCHER_LOG,
    SPEC_FILE,
    STOP_FILE,
    EventTail,
    Spec,
    SpecError,
    append_event,
    output_tail,
    read_spec,
    torchrun_command,
    write_spec,
)
from training.ml.launch.rank import lost_a_peer, main, run_rank
from training.ml.progress import Progress, RunHooks, TrainResult
from training.ml.scratch import scratch_dir

__all__ = [
    "EVENTS_FILE",
    "EventTail",
    "ProcessesFailed",
    "Spec",
    "SpecError",
    "append_event",
    "lost_a_peer",
    "main",
    "read_spec",
    "run_rank",
    "torchrun_command",
    "train_in_processes",
    "write_spec",
]

PROJECT_ROOT = Path(__file__).resolve().parents[3]
WORK_PREFIX = "rlhf-train-processes-"
# After SIGTERM torchrun stops its ranks (SIGTERM, then SIGKILL after its own 30 s) before it exits.
STOP_GRACE_SECONDS = 40.0


class ProcessesFailed(RuntimeError):
    """The run's processes failed. ``message`` is for people: the cause, then the tail of the failing
    process's output."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# --- The parent: start the processes, relay their events, stop them -----------------------------------------
def train_in_processes(
    kind: str,
    *,
    processes: int,
    config: TrainConfig,
    data_dir: Path,
    base_dir: Path,
    output_dir: Path,
    hooks: RunHooks,
    reward_dir: Path | None = None,
    poll_seconds: float = 0.2,
) -> TrainResult:
    """``train`` in ``processes`` processes (at least 2; see the module docstring). Progress and log
    lines reach ``hooks`` from rank 0; ``hooks.should_stop`` is asked while they run and a yes stops
    every process after the same step (the result then says ``stopped``). Raises ``ProcessesFailed``
    with a readable message when they fail; no process is left running on any way out."""
    if processes < 2:
        raise ValueError(f"train_in_processes needs at least 2 processes, not {processes}; call train().")
    with scratch_dir(WORK_PREFIX) as work:
        spec = Spec(kind, config, Path(data_dir), Path(base_dir), Path(output_dir), reward_dir, hooks.heartbeat_seconds)
        write_spec(work / SPEC_FILE, spec)
        tail = EventTail(work / EVENTS_FILE)
        agent: subprocess.Popen[bytes] | None = None
        try:  # from before the start: an exception (a soft time limit) in between must stop it too
            with (work / LAUNCHER_LOG).open("wb") as log:
                agent = subprocess.Popen(
                    _agent_command(processes, work / SPEC_FILE),
                    cwd=PROJECT_ROOT,
                    env=_child_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: one signal reaches torchrun and only it
                )
            state = _relay(agent, tail, hooks, work, poll_seconds)
        finally:
            if agent is not None:
                _stop(agent)
        return _result(state, agent.returncode, work, processes)


@dataclass
class _State:
    result: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    stop_sent: bool = False


def _relay(agent: subprocess.Popen[bytes], tail: EventTail, hooks: RunHooks, work: Path, poll: float) -> _State:
    """Pass events to ``hooks`` and stop requests to the processes until torchrun exits."""
    state = _State()
    while True:
        running = agent.poll() is None  # before reading, so nothing written before the exit is missed
        for event in tail.read():
            _handle(event, hooks, state)
        if not running:
            return state
        if not state.stop_sent and hooks.should_stop():  # also the parent's own heartbeat
            (work / STOP_FILE).touch()
            state.stop_sent = True
        time.sleep(poll)


def _handle(event: dict[str, Any], hooks: RunHooks, state: _State) -> None:
    kind = event.get("event")
    if kind == "report":
        metrics = event.get("metrics") or {}
        hooks.report(
            Progress(
                step=int(event.get("step") or 0),
                total_steps=int(event.get("total_steps") or 0),
                epoch=float(event.get("epoch") or 0.0),
                metrics=metrics if isinstance(metrics, dict) else {},
            )
        )
    elif kind == "log":
        hooks.log(str(event.get("line", "")))
    elif kind == "result":
        state.result = event
    elif kind == "error":
        state.errors.append(event)


def _result(state: _State, returncode: int | None, work: Path, processes: int) -> TrainResult:
    if returncode == 0 and state.result is not None and not state.errors:
        metrics = dict(state.result.get("metrics") or {})
        metrics["processes"] = processes
        return TrainResult(
            metrics=metrics, steps=int(state.result.get("steps") or 0), stopped=bool(state.result.get("stopped"))
        )
    raise ProcessesFailed(_failure(state, returncode, work, processes))


def _failure(state: _State, returncode: int | None, work: Path, processes: int) -> str:
    """The cause, and the output that shows it. A rank's own error (bad data, a bug) is the cause;
    an error in a collective only says that another rank went away, and a rank killed by a signal
    (or the kernel, out of memory) writes nothing: then torchrun's output names it."""
    own = [e for e in state.errors if not e.get("peer")]
    if own:
        error = own[0]
        cause = str(error.get("message") or error.get("type") or "unknown error")
        log, where = work / f"rank-{error.get('rank')}.log", f"training process {error.get('rank')} of {processes}"
    else:
        if state.errors:
            echo = state.errors[0]
            cause = (
                f"training process {echo.get('rank')} of {processes} lost contact with another one, which ended"
                f" without an error of its own (killed, or out of memory?): {echo.get('message')}"
            )
        elif returncode:
            cause = (
                f"a training process ended without an error of its own (killed, or out of memory?); torchrun"
                f" exited with status {returncode}"
            )
        else:
            cause = "the training processes ended without a result"
        log, where = work / LAUNCHER_LOG, "torchrun, which names the process that ended first"
    tail = output_tail(log) or output_tail(work / LAUNCHER_LOG)
    return f"Training failed: {cause}\n\nLast output of {where}:\n{tail or '(none)'}"


def _stop(agent: subprocess.Popen[bytes], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to torchrun's group (it stops its ranks), then SIGKILL; its ranks die with it."""
    if agent.poll() is None:
        _signal_group(agent.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.wait(timeout=grace)
    _signal_group(agent.pid, signal.SIGKILL)  # anything of its group still there
    agent.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _agent_command(processes: int, spec: Path) -> list[str]:
    return [sys.executable, "-m", "training.ml.launch", "--agent", str(os.getpid()), str(processes), str(spec)]


def _child_env() -> dict[str, str]:
    """This process's environment without rank or torchrun variables of its own (torchrun gives the
    ranks theirs);
    this checkout first on the path (``-m training.ml.launch`` must import it wherever the worker
    was started); no progress bars in the ranks' logs."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in RANK_VARIABLES and not name.startswith(LAUNCHER_PREFIXES)
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env
