"""Checks on a local Hugging Face checkpoint before it is registered as a policy. No Django."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


class CheckpointError(ValueError):
    """The folder is not a causal LM checkpoint that can be served. The message says why."""


def inspect_causal_lm(path: str | Path) -> dict[str, Any]:
    """What a causal LM checkpoint folder holds, or ``CheckpointError``: it must load with
    ``AutoConfig`` and ``AutoTokenizer`` from the folder alone (no hub, no remote code), be a causal
    LM architecture, and have weights."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder.")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError or KeyError depending on what is wrong
        raise CheckpointError(
            f"{folder} is not a Hugging Face model folder: its config.json cannot be loaded ({exc})."
        ) from exc
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CheckpointError(f"{folder} holds a {config.model_type!r} model, which is not a causal language model.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"{folder} has no tokenizer that loads ({exc}).") from exc
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise CheckpointError(f"{folder} has no weights (*.safetensors or *.bin).")
    return {
        "model_type": config.model_type,
        "architectures": list(config.architectures or []),
        "vocab_size": len(tokenizer),
        "has_chat_template": bool(tokenizer.chat_template),
    }
