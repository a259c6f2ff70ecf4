"""Celery's filesystem broker (kombu's filesystem transport), the embedded default: every folder it
uses lives under one folder (``CELERY_FILESYSTEM_DIR``), none in the working directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def filesystem_transport_options(folder: Path) -> dict[str, Any]:
    """kombu's transport options for a filesystem broker in ``folder`` (created if missing). Without
    ``control_folder`` kombu keeps its exchange table in ``./control`` of whatever the current
    directory is, the checkout included."""
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }
