"""Writing a build out: a snapshot folder (+ its ``DatasetSnapshot`` row), or one JSON Lines export.

A snapshot is written into ``root/.tmp-<random>/`` and renamed to ``root/<timestamp>-<hash>/`` only
when every file is complete; the row is created after the rename. Any exception (the progress
callback's included) removes the temp folder and propagates.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from django.conf import settings

from training.models import DatasetSnapshot
from training.processor.build import Builder, Row, Scratch
from training.processor.options import DATASETS, SPLITS, ProcessorOptions
from training.processor.read import Source, conversations

EXPORT_FORMATS = {"trl-preference": "preference", "trl-unpaired": "unpaired", "openai-jsonl": "unpaired"}


def _line(row: Row) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def _digest(dataset: str, split: str, line: str) -> bytes:
    return hashlib.blake2b(f"{dataset}/{split}\n{line}".encode(), digest_size=16).digest()


class _Writer:
    """Writes rows as JSON Lines, each distinct (dataset, split, line) once. Rows wait in a buffer
    of ``FLUSH`` so their digests are checked against the scratch table a batch at a time."""

    FLUSH = 2000

    def __init__(self, scratch: Scratch) -> None:
        self.scratch = scratch
        self.pending: list[tuple[str, str, str, bytes]] = []

    def _add(self, dataset: str, split: str, row: Row) -> None:
        line = _line(row)
        self.pending.append((dataset, split, line, _digest(dataset, split, line)))
        if len(self.pending) >= self.FLUSH:
            self.flush()

    def flush(self) -> None:
        new = self.scratch.new_digests([entry[3] for entry in self.pending])
        for dataset, split, line, digest in self.pending:
            if digest in new:
                new.discard(digest)
                self._write(dataset, split, line)
            else:
                self._duplicate(dataset)
        self.pending.clear()

    def _write(self, dataset: str, split: str, line: str) -> None:
        raise NotImplementedError

    def _duplicate(self, dataset: str) -> None:
        raise NotImplementedError


class _SnapshotWriter(_Writer):
    """``<dataset>/<split>.jsonl`` for every dataset and split."""

    def __init__(self, folder: Path, scratch: Scratch) -> None:
        super().__init__(scratch)
        self.files: dict[tuple[str, str], IO[str]] = {}
        for dataset in DATASETS:
            (folder / dataset).mkdir()
            for split in SPLITS:
                self.files[(dataset, split)] = (folder / dataset / f"{split}.jsonl").open("w", encoding="utf-8")
        self.counts: dict[str, Counter[str]] = {dataset: Counter() for dataset in DATASETS}
        self.duplicates: Counter[str] = Counter()

    def emit(self, dataset: str, split: str, row: Row) -> None:
        self._add(dataset, split, row)

    def _write(self, dataset: str, split: str, line: str) -> None:
        self.files[(dataset, split)].write(line + "\n")
        self.counts[dataset][split] += 1

    def _duplicate(self, dataset: str) -> None:
        self.duplicates[dataset] += 1

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


class _ExportWriter(_Writer):
    """One dataset (one or both splits) into one file, optionally reshaped (OpenAI chat format)."""

    def __init__(self, handle: IO[str], scratch: Scratch, fmt: str, split: str) -> None:
        super().__init__(scratch)
        self.handle, self.fmt = handle, fmt
        self.dataset = EXPORT_FORMATS[fmt]
        self.splits = SPLITS if split == "all" else (split,)
        self.rows = 0
        self.duplicates = 0

    def emit(self, dataset: str, split: str, row: Row) -> None:
        if dataset != self.dataset or split not in self.splits:
            return
        if self.fmt == "openai-jsonl":
            if not row["label"]:
                return
            row = {"messages": [*row["prompt"], *row["completion"]]}
        self._add(self.fmt, split, row)

    def _write(self, dataset: str, split: str, line: str) -> None:
        self.handle.write(line + "\n")
        self.rows += 1

    def _duplicate(self, dataset: str) -> None:
        self.duplicates += 1


def _run(
    *,
    options: ProcessorOptions,
    scratch: Scratch,
    writer: _SnapshotWriter | _ExportWriter,
    wanted: frozenset[str],
    progress: Callable[[int], None] | None,
) -> tuple[Source, Builder]:
    source = Source.at_start()
    builder = Builder(options=options, scratch=scratch, emit=writer.emit, wanted=wanted)

    def on_batch() -> None:
        if progress is not None:
            progress(source.rows_read)

    for conv in conversations(source=source, chunk_size=options.chunk_size, on_batch=on_batch):
        builder.conversation(conv)
    builder.same_prompt()
    writer.flush()
    return source, builder


def _content_hash(folder: Path) -> str:
    """sha256 over the data files, in DATASETS x SPLITS order, each preceded by its name and size."""
    digest = hashlib.sha256()
    for dataset in DATASETS:
        for split in SPLITS:
            path = folder / dataset / f"{split}.jsonl"
            digest.update(f"{dataset}/{split}.jsonl {path.stat().st_size}\n".encode())
            with path.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()


def snapshot_build(
    *, options: ProcessorOptions, root: Path | None = None, progress: Callable[[int], None] | None = None
) -> DatasetSnapshot:
    """Build the four datasets from the feedback so far into a new snapshot folder and record it.

    ``progress(rows_read)`` is called after every batch of ``options.chunk_size`` conversations; an
    exception it raises aborts the build (nothing is left behind) and propagates."""
    root = Path(settings.VAR_DIR) / "datasets" if root is None else Path(root)
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        scratch = Scratch(work / "scratch.sqlite3")
        writer = _SnapshotWriter(work, scratch)
        try:
            source, builder = _run(
                options=options, scratch=scratch, writer=writer, wanted=frozenset(DATASETS), progress=progress
            )
        finally:
            writer.close()
            scratch.close()
        os.unlink(scratch.path)
        content_hash = _content_hash(work)
        row_counts = {d: {s: writer.counts[d][s] for s in SPLITS} for d in DATASETS}
        stats = {**builder.stats_dict(), "duplicates_removed": {d: writer.duplicates[d] for d in DATASETS}}
        split = {"seed": options.seed, "test_fraction": options.test_fraction, "unit": "conversation"}
        manifest = {
            "format": 1,
            "content_hash": content_hash,
            "row_counts": row_counts,
            "split": split,
            "source": source.as_dict(),
            "options": options.as_dict(),
            "stats": stats,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        size = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
        final = _final_path(root, content_hash)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return DatasetSnapshot.objects.create(
        path=str(final),
        content_hash=content_hash,
        row_counts=row_counts,
        split=split,
        source=source.as_dict(),
        options=options.as_dict(),
        stats=stats,
        size_bytes=size,
        build_seconds=round(time.monotonic() - started, 3),
    )


def _final_path(root: Path, content_hash: str) -> Path:
    name = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{content_hash[:12]}"
    final, n = root / name, 1
    while final.exists():
        n += 1
        final = root / f"{name}-{n}"
    return final


def feedback_export(
    *,
    options: ProcessorOptions,
    fmt: str,
    path: Path,
    split: str = "all",
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write one dataset of a build (same rules, streaming) to ``path`` as JSON Lines; the row count.

    ``fmt``: ``trl-preference`` or ``trl-unpaired`` (TRL's rows as in a snapshot), or ``openai-jsonl``
    (``{"messages": [...prompt, good answer]}`` from the unpaired rows labelled true). The file
    appears complete or not at all (written beside ``path`` and renamed)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    if split not in (*SPLITS, "all"):
        raise ValueError(f"Unknown split {split!r}; choose train, test or all.")
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as work:
        partial = Path(work) / "export.jsonl"
        scratch = Scratch(Path(work) / "scratch.sqlite3")
        try:
            with partial.open("w", encoding="utf-8") as handle:
                writer = _ExportWriter(handle, scratch, fmt, split)
                wanted = frozenset({EXPORT_FORMATS[fmt]})
                _run(options=options, scratch=scratch, writer=writer, wanted=wanted, progress=progress)
        finally:
            scratch.close()
        partial.replace(path)
    return writer.rows
