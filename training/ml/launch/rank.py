"""What each of a run's processes runs (``python -m training.ml.launch SPEC``, under torchrun), and the
``--agent`` step that becomes torchrun. No Django."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

from training.ml.launch.protocol import (
    AGENT_PID_VARIABLE,
    STOP_FILE,
    append_event,
    read_spec,
    torchrun_command,
)
from training.ml.progress import Progress, RunHooks


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
