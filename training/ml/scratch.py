"""Temporary folders a training run writes to and always removes. No Django, no torch (the
multi-process launcher, ``training.ml.launch``, imports this without loading torch).

A process killed outright (Celery's hard time limit, ``kill -9``, the out-of-memory killer) cannot
remove its folders, and a trainer's may hold checkpoints. So each folder names the process that made
it (``OWNER_FILE``: host name and pid), and every new one first removes those whose maker, on this
machine, is gone (``sweep_orphans``)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

SCRATCH_PREFIX = "rlhf-train-"  # the launcher's work folders ("rlhf-train-processes-") start so too
OWNER_FILE = ".rlhf-owner"


@contextmanager
def scratch_dir(prefix: str = SCRATCH_PREFIX) -> Iterator[Path]:
    """A new temporary folder named ``<prefix>...``, removed with what it holds when the block ends."""
    sweep_orphans()
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        (path / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_orphans(root: Path | None = None) -> list[Path]:
    """Remove the scratch folders under ``root`` (the temporary folder) whose maker was a process of
    this machine that no longer runs; returns them. A folder without an owner (being made, or not a
    scratch folder) or of another machine (a shared temporary folder) is left alone."""
    host = socket.gethostname()
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        try:
            owner_host, pid = (path / OWNER_FILE).read_text().split()
            if owner_host != host or _alive(int(pid)):
                continue
        except (OSError, ValueError):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        logger.warning("removed %d folder(s) of training processes that were killed: %s", len(removed), removed)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
