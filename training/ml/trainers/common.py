"""What every trainer shares: TRL config builders, model loading, saving, metrics. No Django.

The ``build_*_config`` functions are the one place where a ``TrainConfig`` becomes TRL arguments, so
a bare benchmark script (``bench/reward_bare.py``) and the platform train with identical settings.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from trl import DPOConfig, KTOConfig, RewardConfig
from trl.experimental.ppo import PPOConfig

from training.ml.callbacks import clean_number
from training.ml.config import TrainConfig
from training.ml.distributed import per_process_batch_size


def device_args() -> dict[str, Any]:
    """CPU unless CUDA is there; bf16 only on a CUDA device that supports it (a bf16 matmul on these
    CPUs dies with SIGILL), never fp16."""
    cuda = torch.cuda.is_available()
    return {"use_cpu": not cuda, "bf16": bool(cuda and torch.cuda.is_bf16_supported()), "fp16": False}


def common_args(config: TrainConfig, scratch_dir: str | Path) -> dict[str, Any]:
    """TrainingArguments shared by every kind. ``scratch_dir`` is the trainer's own ``output_dir``:
    nothing is saved there (``save_strategy="no"``), and ``train`` deletes it afterwards.

    ``batch_size`` is a step's batch over all the run's processes (``training.ml.distributed``): each
    takes its share; in one process, all of it."""
    per_process = per_process_batch_size(config.batch_size)
    return {
        "output_dir": str(scratch_dir),
        "per_device_train_batch_size": per_process,
        "per_device_eval_batch_size": per_process,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "seed": config.seed,
        "data_seed": config.seed,
        "logging_strategy": "steps",
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        # TRL defaults gradient checkpointing on; the platform's models are small. Both names: the old one
        # is TRL's field, the new one keeps transformers from warning about the old.
        "gradient_checkpointing": False,
        "activation_checkpointing": False,
        # Every parameter of these models takes part in each forward pass, so DDP (several processes)
        # need not walk the graph looking for unused ones after each backward. Ignored in one process.
        "ddp_find_unused_parameters": False,
        **device_args(),
    }


def build_reward_config(config: TrainConfig, scratch_dir: str | Path) -> RewardConfig:
    """The ``RewardConfig`` the platform trains reward models with (shared with ``bench/reward_bare.py``)."""
    return RewardConfig(**common_args(config, scratch_dir), max_length=config.max_length)


def build_dpo_config(config: TrainConfig, scratch_dir: str | Path) -> DPOConfig:
    return DPOConfig(**common_args(config, scratch_dir), max_length=config.max_length, beta=config.beta)


def build_kto_config(config: TrainConfig, scratch_dir: str | Path) -> KTOConfig:
    # KTO's default "sequential" sampling pairs each row with its batch neighbours for the KL estimate;
    # the rows are shuffled (seeded) before they reach the trainer instead.
    return KTOConfig(**common_args(config, scratch_dir), max_length=config.max_length, beta=config.beta)


def ppo_total_episodes(config: TrainConfig, rows: int) -> int:
    """Episodes (prompts rolled out) for ``max_steps`` PPO updates, or for ``epochs`` over ``rows``."""
    rollout_batch = config.batch_size * config.gradient_accumulation_steps
    if config.max_steps > 0:
        return config.max_steps * rollout_batch
    return max(rollout_batch, int(config.epochs * rows))


def build_ppo_config(config: TrainConfig, scratch_dir: str | Path, *, rows: int) -> PPOConfig:
    args = common_args(config, scratch_dir)
    args.pop("max_steps")  # PPO counts episodes, not steps
    return PPOConfig(
        **args,
        total_episodes=ppo_total_episodes(config, rows),
        response_length=config.max_new_tokens,
        kl_coef=config.kl_coef,
        num_ppo_epochs=config.ppo_epochs,
        num_mini_batches=1,
        local_rollout_forward_batch_size=per_process_batch_size(config.batch_size),
        stop_token="eos",
        num_sample_generations=0,
    )


def quiet(trainer: Trainer) -> None:
    """No printing to stdout: the run's hooks get the logs."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


# --- Loading ---------------------------------------------------------------------------------------
def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def is_sequence_classifier(folder: Path) -> bool:
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def load_causal_lm(folder: Path) -> PreTrainedModel:
    if is_sequence_classifier(folder):
        raise ValueError(f"{folder} holds a reward (sequence-classification) model, not a causal language model.")
    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)


def load_reward_model(folder: Path, tokenizer: PreTrainedTokenizerBase | None = None) -> PreTrainedModel:
    """A scalar-output sequence classifier from ``folder``: continue a reward model, or put a fresh
    (seeded) head on a causal LM's body."""
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, local_files_only=True, num_labels=1, dtype=torch.float32
    )
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def check_same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase, what: str) -> None:
    if a.get_vocab() != b.get_vocab():
        raise ValueError(f"The {what} uses a different tokenizer from the policy; they must share one vocabulary.")


# --- Saving ----------------------------------------------------------------------------------------
def check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(f"Output folder {output_dir} already exists and is not empty.")


def save_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: Path,
    *,
    generation_config: GenerationConfig | None = None,
) -> None:
    """``save_pretrained`` (float32 safetensors, config, generation config, tokenizer) into a sibling
    temporary folder, then rename it to ``output_dir``: the folder is complete or absent."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        model = model.float()
        if generation_config is not None:
            model.generation_config = generation_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(staging)
        if output_dir.exists():
            output_dir.rmdir()  # empty (check_output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def base_generation_config(folder: Path) -> GenerationConfig | None:
    try:
        return GenerationConfig.from_pretrained(folder, local_files_only=True)
    except OSError:
        return None


# --- Metrics ---------------------------------------------------------------------------------------
def metric_name(key: str) -> str:
    return key.replace("/", "_")


def clean_metrics(raw: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe values (NaN/inf -> None), ``/`` in names -> ``_``; strings kept (notes)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out[metric_name(key)] = value if isinstance(value, str) or value is None else clean_number(value)
    return out


def require_rows(rows: int, needed: int, what: str) -> None:
    if rows < needed:
        raise ValueError(
            f"The training data has {rows} {what}, fewer than one batch needs ({needed}); "
            "collect more feedback or lower batch_size."
        )
