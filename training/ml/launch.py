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
import ctypes
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.ml.config import KINDS, ConfigError, TrainConfig, validate_config
from training.ml.distributed import LAUNCHED_VARIABLE, RANK_VARIABLES
from training.ml.progress import Progress, RunHooks, TrainResult
from training.ml.scratch import scratch_dir

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORK_PREFIX = "rlhf-train-processes-"
SPEC_FILE, EVENTS_FILE, STOP_FILE, LAUNCHER_LOG = "spec.json", "events.jsonl", "stop", "launcher.log"
AGENT_PID_VARIABLE = "RLHF_TRAINING_AGENT_PID"  # torchrun's pid, for its ranks' parent-death check
SPEC_KEYS = {"kind", "config", "data_dir", "base_dir", "output_dir", "reward_dir", "heartbeat_seconds"}
TAIL_LINES = 20
TAIL_LINE_CHARS = 300
# After SIGTERM torchrun stops its ranks (SIGTERM, then SIGKILL after its own 30 s) before it exits.
STOP_GRACE_SECONDS = 40.0


class SpecError(ValueError):
    """The spec file cannot be used; the message says which file and what is wrong."""


class ProcessesFailed(RuntimeError):
    """The run's processes failed. ``message`` is for people: the cause, then the tail of the failing
    process's output."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# --- The spec ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    kind: str
    config: TrainConfig
    data_dir: Path
    base_dir: Path
    output_dir: Path
    reward_dir: Path | None
    heartbeat_seconds: float


def write_spec(path: Path, spec: Spec) -> None:
    fields = {
        "kind": spec.kind,
        "config": asdict(spec.config),
        "data_dir": str(spec.data_dir),
        "base_dir": str(spec.base_dir),
        "output_dir": str(spec.output_dir),
        "reward_dir": str(spec.reward_dir) if spec.reward_dir is not None else None,
        "heartbeat_seconds": spec.heartbeat_seconds,
    }
    path.write_text(json.dumps(fields, indent=2), encoding="utf-8")


def read_spec(path: Path) -> Spec:
    """The spec in ``path``, or ``SpecError`` naming the file and everything wrong with it."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"Training spec {path} cannot be read: {exc.strerror or exc}.") from None
    except ValueError as exc:
        raise SpecError(f"Training spec {path} is not JSON: {exc}.") from None
    if not isinstance(raw, dict):
        raise SpecError(f"Training spec {path} must be a JSON object, not {type(raw).__name__}.")
    problems = []
    if missing := sorted(SPEC_KEYS - raw.keys()):
        problems.append(f"it lacks {', '.join(missing)}")
    if unknown := sorted(raw.keys() - SPEC_KEYS):
        problems.append(f"it has unknown keys {', '.join(unknown)}")
    kind = raw.get("kind")
    if "kind" in raw and kind not in KINDS:
        problems.append(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    config: TrainConfig | None = None
    if "config" in raw and kind in KINDS:
        try:
            config = validate_config(kind, raw["config"])
        except ConfigError as exc:
            details = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in exc.fields.items())
            problems.append(f"its config is invalid ({details})")
    for key in ("data_dir", "base_dir", "reward_dir", "output_dir"):
        value = raw.get(key)
        if key not in raw or (key == "reward_dir" and value is None):  # reward_dir: PPO's alone
            continue
        if not isinstance(value, str) or not value:
            problems.append(f"{key} must be a path, not {value!r}")
        elif key != "output_dir" and not Path(value).is_dir():  # the output folder is made by training
            problems.append(f"{key} {value} is not a folder")
    beat = raw.get("heartbeat_seconds")
    if "heartbeat_seconds" in raw and (
        isinstance(beat, bool) or not isinstance(beat, int | float) or not math.isfinite(beat) or beat < 0
    ):
        problems.append(f"heartbeat_seconds must be a number of seconds, not {beat!r}")
    if problems or config is None:
        raise SpecError(f"Training spec {path} cannot be used: {'; '.join(problems)}.")
    return Spec(
        kind=str(kind),
        config=config,
        data_dir=Path(raw["data_dir"]),
        base_dir=Path(raw["base_dir"]),
        output_dir=Path(raw["output_dir"]),
        reward_dir=Path(raw["reward_dir"]) if raw["reward_dir"] is not None else None,
        heartbeat_seconds=float(raw["heartbeat_seconds"]),
    )


# --- Events --------------------------------------------------------------------------------------------
def append_event(work_dir: Path, event: dict[str, Any]) -> None:
    """One JSON line, written with one ``write`` in append mode: lines from two processes never mix."""
    line = json.dumps(event, default=str) + "\n"
    fd = os.open(work_dir / EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


class EventTail:
    """The events appended since the last ``read``; a line still being written waits for its end."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as stream:
                stream.seek(self.offset)
                chunk = stream.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "log", "line": f"unreadable event from the training processes: {line[:200]!r}"}
            if isinstance(event, dict):
                events.append(event)
        return events


def output_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a process's output; progress bars (carriage returns) count as lines."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.rstrip()[:TAIL_LINE_CHARS] for line in text.replace("\r", "\n").split("\n") if line.strip()]
    return "\n".join(kept[-lines:])


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
    """This process's environment without rank variables of its own (torchrun gives the ranks theirs);
    this checkout first on the path (``-m training.ml.launch`` must import it wherever the worker
    was started); no progress bars in the ranks' logs."""
    env = {name: value for name, value in os.environ.items() if name not in RANK_VARIABLES}
    env[LAUNCHED_VARIABLE] = "1"  # torchrun's ranks: the rank variables it gives them are theirs
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def torchrun_command(processes: int, spec: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "--max-restarts=0",
        "-m",
        "training.ml.launch",
        str(spec),
    ]


# --- The processes --------------------------------------------------------------------------------------
def die_with_parent(expected_parent: int | None) -> None:
    """Linux: be sent SIGKILL when the parent process dies; exit now if it is already gone (it died
    before this was set). Elsewhere nothing: there ``train_in_processes``'s own clean-up is all."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


class _RankHooks:
    """``RunHooks`` of one rank: rank 0 writes events; every rank takes rank 0's stop decision."""

    def __init__(self, work: Path, rank: int):
        self.work = work
        self.main = rank == 0

    def report(self, progress: Progress) -> None:
        if self.main:
            append_event(self.work, {"event": "report", **asdict(progress)})

    def log(self, line: str) -> None:
        if self.main:
            append_event(self.work, {"event": "log", "line": line})
        else:
            print(line, file=sys.stderr)

    def should_stop(self) -> bool:
        from training.ml.distributed import decided_by_main_process

        return decided_by_main_process(self.main and (self.work / STOP_FILE).exists())

    def hooks(self, heartbeat_seconds: float) -> RunHooks:
        return RunHooks(
            report=self.report, should_stop=self.should_stop, log=self.log, heartbeat_seconds=heartbeat_seconds
        )


def _redirect_output(path: Path) -> None:
    """This process's stdout and stderr (file descriptors, so C++ and child output too) into ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


PEER_LOST = re.compile(r"connection (closed|reset) by peer|nccl communicator was aborted|broken pipe", re.IGNORECASE)


def lost_a_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank went away (gloo: "Connection
    closed by peer"; NCCL: an aborted communicator) rather than a failure of this rank's own."""
    import torch.distributed as dist

    distributed_error = getattr(dist, "DistError", None)
    return (distributed_error is not None and isinstance(exc, distributed_error)) or bool(PEER_LOST.search(str(exc)))


def run_rank(spec_path: Path) -> int:
    """One rank: read the spec, train, and (rank 0) report the result; any failure is an ``error``
    event with the exception's text, and the traceback goes to this rank's log."""
    from training.ml.distributed import rank as current_rank

    rank = current_rank()
    work = spec_path.parent
    if work.is_dir():
        _redirect_output(work / f"rank-{rank}.log")
    try:
        spec = read_spec(spec_path)
        with contextlib.suppress(ImportError):
            import datasets
            import transformers

            datasets.disable_progress_bars()
            transformers.utils.logging.disable_progress_bar()
        from training.ml.trainers import train

        result = train(
            spec.kind,
            config=spec.config,
            data_dir=spec.data_dir,
            base_dir=spec.base_dir,
            output_dir=spec.output_dir,
            hooks=_RankHooks(work, rank).hooks(spec.heartbeat_seconds),
            reward_dir=spec.reward_dir,
        )
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        error = {"rank": rank, "type": type(exc).__name__, "message": str(exc), "peer": lost_a_peer(exc)}
        with contextlib.suppress(OSError):
            append_event(work, {"event": "error", **error})
        return 1
    if rank == 0:
        outcome = {"metrics": result.metrics, "steps": result.steps, "stopped": result.stopped}
        append_event(work, {"event": "result", **outcome})
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return 0


USAGE = (
    "usage: python -m training.ml.launch SPEC.json  (one rank, under torchrun)\n"
    "       python -m training.ml.launch --agent PARENT_PID PROCESSES SPEC.json  (becomes torchrun)"
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 4 and args[0] == "--agent" and args[1].isdigit() and args[2].isdigit():
        # Dies with the worker that started it, then becomes torchrun (the signal survives exec).
        die_with_parent(int(args[1]))
        os.environ[AGENT_PID_VARIABLE] = str(os.getpid())
        command = torchrun_command(int(args[2]), Path(args[3]))
        os.execv(command[0], command)
    if len(args) == 1 and not args[0].startswith("-"):
        agent = os.environ.get(AGENT_PID_VARIABLE)
        die_with_parent(int(agent) if agent and agent.isdigit() else None)
        return run_rank(Path(args[0]))
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
