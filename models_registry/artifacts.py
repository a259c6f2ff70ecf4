"""Artifact folders and their checksums.

A version records the sha256 of every file in its folder when it is registered; serving verifies them
before loading, so a file changed or swapped on disk after registration is refused rather than served.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from django.conf import settings

from models_registry.exceptions import ChecksumMismatch

_CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(folder: str | Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every regular file under ``folder``, sorted by path."""
    root = Path(folder)
    if not root.is_dir():
        raise ChecksumMismatch(f"Artifact folder {root} does not exist.", code="artifact_missing")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def verify_checksums(folder: str | Path, checksums: dict[str, str]) -> None:
    """Raise ``ChecksumMismatch`` naming every changed, missing or unexpected file.

    Extra files count as a mismatch too: a weights file added beside the registered one can change
    what ``from_pretrained`` loads."""
    if not checksums:
        raise ChecksumMismatch(
            f"No checksums are recorded for {folder}; register the artifact so they are.", code="checksums_missing"
        )
    actual = sha256_tree(folder)
    changed = sorted(name for name in checksums.keys() & actual.keys() if checksums[name] != actual[name])
    missing = sorted(checksums.keys() - actual.keys())
    unexpected = sorted(actual.keys() - checksums.keys())
    if changed or missing or unexpected:
        parts = [
            f"{label}: {', '.join(names)}"
            for label, names in (("changed", changed), ("missing", missing), ("unexpected", unexpected))
            if names
        ]
        raise ChecksumMismatch(f"Artifact {folder} does not match its recorded checksums ({'; '.join(parts)}).")


def resolve_artifact_path(path: str) -> Path:
    """Absolute path of an artifact folder; a relative one is taken from the project folder."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(settings.BASE_DIR) / candidate
