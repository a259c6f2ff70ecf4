"""Temporary folders a training run writes to and always removes. No Django, no torch (the
multi-process launcher, ``training.ml.launch``, imports this without loading torch)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCRATCH_PREFIX = "rlhf-train-"


@contextmanager
def scratch_dir(prefix: str = SCRATCH_PREFIX) -> Iterator[Path]:
    """A new temporary folder named ``<prefix>...``, removed with what it holds when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
