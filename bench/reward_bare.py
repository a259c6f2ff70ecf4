"""Bare-script half of the reward-training benchmark: TRL's ``RewardTrainer`` run directly on a
preference dataset folder, with the very ``RewardConfig`` the platform builds
(``training.ml.trainers.build_reward_config``), and none of the platform around it (no hooks
callback, no run bookkeeping, no dataset build, no evaluation); it saves the trained model, as any
script would. Prints the wall time as JSON.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/reward_bare.py DATA_DIR BASE_DIR \
        [--config '{"max_steps": 20, "batch_size": 8}'] [--repeat 3]

DATA_DIR holds ``train.jsonl`` (preference rows); BASE_DIR is a reward model or a causal LM checkpoint
(a fresh scalar head is put on a causal LM, as the platform does). ``--config`` takes the same JSON a
training run's config takes (validated with ``validate_config("reward", ...)``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardTrainer

from training.ml.config import validate_config
from training.ml.trainers import build_reward_config


def run_once(data_dir: Path, base_dir: Path, raw_config: dict) -> dict:
    config = validate_config("reward", raw_config)
    started = time.perf_counter()
    dataset = load_dataset("json", data_files=str(data_dir / "train.jsonl"), split="train")
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, dtype=torch.float32)
    loaded = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reward-bare-") as scratch:
        trainer = RewardTrainer(
            model=model,
            args=build_reward_config(config, scratch),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        ready = time.perf_counter()
        output = trainer.train()
        trained = time.perf_counter()
        # The platform keeps what it trained, so the bare run saves too.
        model.save_pretrained(Path(scratch) / "model")
        tokenizer.save_pretrained(Path(scratch) / "model")
    finished = time.perf_counter()
    return {
        "wall_seconds": round(finished - started, 3),
        "load_seconds": round(loaded - started, 3),
        "setup_seconds": round(ready - loaded, 3),
        "train_seconds": round(trained - ready, 3),
        "loop_seconds": output.metrics["train_runtime"],  # TRL's timing of the loop itself
        "save_seconds": round(finished - trained, 3),
        "steps": trainer.state.global_step,
        "rows": len(dataset),
        "train_loss": output.training_loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("base_dir", type=Path)
    parser.add_argument("--config", default="{}", help="training config as JSON, e.g. '{\"max_steps\": 20}'")
    parser.add_argument("--repeat", type=int, default=1)
    options = parser.parse_args()
    raw = json.loads(options.config)
    runs = [run_once(options.data_dir, options.base_dir, raw) for _ in range(options.repeat)]
    walls = sorted(r["wall_seconds"] for r in runs)
    print(
        json.dumps(
            {
                "kind": "reward",
                "mode": "bare",
                "config": raw,
                "runs": runs,
                "median_wall_seconds": walls[len(walls) // 2],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
