"""Training entry point: ``train(kind, ...)`` runs TRL's trainer for that kind. No Django.

Every TRL call lives under ``training/ml/`` so a TRL upgrade touches one folder. The output folder
receives a complete ``save_pretrained`` checkpoint (float32 safetensors, config, tokenizer, and for
policies the generation config) or, when the run is stopped or fails, nothing at all. Run in each
process of a multi-process run (``training.ml.launch``), it saves from rank 0 only.
"""

from __future__ import annotations

from pathlib import Path

from training.ml.config import KINDS, TrainConfig
from training.ml.progress import RunHooks, TrainResult
from training.ml.trainers.common import (
    build_dpo_config,
    build_kto_config,
    build_ppo_config,
    build_reward_config,
    check_output_dir,
)

__all__ = ["build_dpo_config", "build_kto_config", "build_ppo_config", "build_reward_config", "train"]


def train(
    kind: str,
    *,
    config: TrainConfig,
    data_dir: Path,
    base_dir: Path,
    output_dir: Path,
    hooks: RunHooks,
    reward_dir: Path | None = None,
) -> TrainResult:
    """Train ``kind`` (reward, dpo, kto, ppo) from ``base_dir`` on ``data_dir/train.jsonl`` and write the
    result to ``output_dir`` (absent or empty). ``reward_dir`` (PPO only) is the reward model that scores
    rollouts and initialises the value model. Raises ``ValueError`` with a readable message for data or
    arguments that cannot train."""
    if kind not in KINDS:
        raise ValueError(f"Unknown training kind {kind!r}; choose one of {', '.join(KINDS)}.")
    data_dir, base_dir, output_dir = Path(data_dir), Path(base_dir), Path(output_dir)
    check_output_dir(output_dir)
    if kind == "ppo":
        if reward_dir is None:
            raise ValueError("PPO needs a reward model (reward_dir) to score the policy's answers.")
        from training.ml.trainers.ppo import train_ppo

        return train_ppo(
            config=config,
            data_dir=data_dir,
            base_dir=base_dir,
            output_dir=output_dir,
            hooks=hooks,
            reward_dir=Path(reward_dir),
        )
    from training.ml.trainers.preference import SPECS, train_with_trainer

    return train_with_trainer(
        SPECS[kind], config=config, data_dir=data_dir, base_dir=base_dir, output_dir=output_dir, hooks=hooks
    )
