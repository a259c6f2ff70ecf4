"""Reading a dataset folder's JSON Lines files (TRL's conversational formats). No Django.

A dataset folder holds ``train.jsonl`` and ``test.jsonl``; each line is one row:

- preference (reward, DPO): ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``
- unpaired (KTO): ``{"prompt": [messages], "completion": [messages], "label": true|false}``
- prompts (PPO, policy evaluation): ``{"prompt": [messages]}``
- supervised (SFT, from corrected answers): ``{"prompt": [messages], "completion": [messages]}``

Rows are parsed here (not with ``datasets.load_dataset``, which caches copies under the user's home
and cannot read an empty file) so that a bad line gets a message naming the file and the line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Dataset

# dataset format -> columns every row must have
COLUMNS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "prompts": ("prompt",),
    "supervised": ("prompt", "completion"),
}


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )


def read_rows(path: str | Path, fmt: str) -> list[dict[str, Any]]:
    """The rows of a JSON Lines file in format ``fmt`` (a key of ``COLUMNS``); blank lines are skipped,
    a missing file is an error, an empty file is no rows. Extra columns are dropped."""
    if fmt not in COLUMNS:
        raise ValueError(f"Unknown dataset format {fmt!r}; choose one of {', '.join(COLUMNS)}.")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"Dataset file {file} does not exist.")
    columns = COLUMNS[fmt]
    rows: list[dict[str, Any]] = []
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file}, line {number}: not valid JSON ({exc.msg}).") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{file}, line {number}: expected a JSON object.")
            missing = [c for c in columns if c not in row]
            if missing:
                raise ValueError(
                    f"{file}, line {number}: missing {', '.join(missing)}; a {fmt} row has {', '.join(columns)}."
                )
            for column in columns:
                if column == "label":
                    if not isinstance(row[column], bool):
                        raise ValueError(f"{file}, line {number}: label must be true or false.")
                elif not _is_messages(row[column]):
                    raise ValueError(
                        f"{file}, line {number}: {column} must be a non-empty list of"
                        ' {"role": ..., "content": ...} messages.'
                    )
            rows.append({c: row[c] for c in columns})
    return rows


def load_split(data_dir: str | Path, split: str, fmt: str) -> Dataset:
    """``data_dir/<split>.jsonl`` as a ``datasets.Dataset`` (possibly with no rows). A missing test file
    counts as empty; a missing train file is an error."""
    path = Path(data_dir) / f"{split}.jsonl"
    if split != "train" and not path.exists():
        return Dataset.from_list([])
    rows = read_rows(path, fmt)
    return Dataset.from_list(rows)
