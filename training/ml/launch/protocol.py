"""The files the worker and a run's processes share (``training.ml.launch``): the spec, the events, and
the command that starts the processes. No Django, no torch."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.ml.config import KINDS, ConfigError, TrainConfig, validate_config

SPEC_FILE, EVENTS_FILE, STOP_FILE, LAUNCHER_LOG = "spec.json", "events.jsonl", "stop", "launcher.log"
AGENT_PID_VARIABLE = "RLHF_TRAINING_AGENT_PID"  # torchrun's pid, for its ranks' parent-death check
SPEC_KEYS = {"kind", "config", "data_dir", "base_dir", "output_dir", "reward_dir", "heartbeat_seconds"}
TAIL_LINES = 20
TAIL_LINE_CHARS = 300


class SpecError(ValueError):
    """The spec file cannot be used; the message says which file and what is wrong."""


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


def torchrun_command(processes: int, spec: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",  # this node alone, whatever PET_NNODES the environment had
        f"--nproc-per-node={processes}",
        "--max-restarts=0",
        "-m",
        "training.ml.launch",
        str(spec),
    ]
