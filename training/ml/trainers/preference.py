"""Reward, DPO and KTO: the kinds that run TRL's ``Trainer``-based loops, one function with a spec per
kind. No Django."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import Trainer
from trl import DPOTrainer, KTOTrainer, RewardTrainer

from training.ml.callbacks import HooksCallback
from training.ml.config import TrainConfig, with_min_steps
from training.ml.data import load_split
from training.ml.distributed import is_main_process, per_process_batch_size, world_size
from training.ml.progress import RunHooks, TrainResult
from training.ml.scratch import scratch_dir
from training.ml.trainers.common import (
    base_generation_config,
    build_dpo_config,
    build_kto_config,
    build_reward_config,
    clean_metrics,
    is_sequence_classifier,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    quiet,
    require_rows,
    save_checkpoint,
)

EMPTY_TEST_NOTE = "test split is empty: no eval metrics"


def _run(
    trainer: Trainer,
    callback: HooksCallback,
    *,
    config: TrainConfig,
    train_rows: int,
    test_rows: int,
    started: float,
) -> tuple[dict[str, Any], int, bool]:
    """Train (and evaluate on the test split when there is one); (metrics, steps, stopped)."""
    quiet(trainer)
    usable = len(trainer.train_dataset)  # type: ignore[arg-type]
    require_rows(usable, config.batch_size, f"usable rows (of {train_rows}, after dropping rows over max_length)")
    output = trainer.train()
    steps = int(trainer.state.global_step)
    raw: dict[str, Any] = {k: v for k, v in callback.latest.items() if k not in {"epoch", "total_flos"}}
    raw.update(
        {
            "train_loss": output.training_loss,
            "steps": steps,
            "samples": steps * config.batch_size * config.gradient_accumulation_steps,  # an upper bound
            "train_rows": train_rows,
            "usable_train_rows": usable,
            "test_rows": test_rows,
        }
    )
    if callback.stopped:
        raw["seconds"] = round(time.perf_counter() - started, 3)
        return clean_metrics(raw), steps, True
    if test_rows and trainer.eval_dataset is not None:
        eval_metrics = trainer.evaluate()  # logged through the callback
        raw.update({k: v for k, v in eval_metrics.items() if k.startswith("eval_")})
    elif not test_rows:
        raw["eval_note"] = EMPTY_TEST_NOTE
    raw["seconds"] = round(time.perf_counter() - started, 3)
    return clean_metrics(raw), steps, False


@dataclass(frozen=True)
class _Spec:
    """What differs between the ``Trainer``-based kinds; everything else is ``train_with_trainer``."""

    dataset: str  # the snapshot's dataset the kind reads
    what: str  # its rows, as an error message names them
    trainer_class: Callable[..., Trainer]
    build_args: Callable[[TrainConfig, Path], Any]
    # DPO and KTO train the causal policy against a frozen copy of it; the reward kind trains a
    # sequence classifier and leaves evaluation to evaluation.evaluate_reward (which scores the same
    # held-out pairs after training: TRL's evaluate() on top would be the same forward passes twice).
    policy: bool
    prepare: Callable[[Dataset, TrainConfig], Dataset] | None = None


def train_with_trainer(
    spec: _Spec, *, config: TrainConfig, data_dir: Path, base_dir: Path, output_dir: Path, hooks: RunHooks
) -> TrainResult:
    started = time.perf_counter()
    train_set = load_split(data_dir, "train", spec.dataset)
    test_set = load_split(data_dir, "test", spec.dataset)
    require_rows(len(train_set), config.batch_size, spec.what)
    if spec.prepare is not None:
        train_set = spec.prepare(train_set, config)
    config = with_min_steps(config, len(train_set))
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(base_dir)
    extra: dict[str, Any] = {}
    if spec.policy:
        model = load_causal_lm(base_dir)
        extra = {"ref_model": load_causal_lm(base_dir), "eval_dataset": test_set if len(test_set) else None}
    else:
        continuing = is_sequence_classifier(base_dir)
        model = load_reward_model(base_dir, tokenizer)
        hooks.log(("continuing reward model " if continuing else "new reward head on ") + str(base_dir))
    callback = HooksCallback(hooks)
    with scratch_dir() as scratch:
        trainer = spec.trainer_class(
            model=model,
            args=spec.build_args(config, scratch),
            train_dataset=train_set,
            processing_class=tokenizer,
            callbacks=[callback],
            **extra,
        )
        metrics, steps, stopped = _run(
            trainer, callback, config=config, train_rows=len(train_set), test_rows=len(test_set), started=started
        )
    if stopped:
        return TrainResult(metrics=metrics, steps=steps, stopped=True)
    model.eval()
    if is_main_process():  # every process holds the same weights after the last all-reduce
        generation = base_generation_config(base_dir) if spec.policy else None
        save_checkpoint(model, tokenizer, output_dir, generation_config=generation)
        hooks.log(f"saved the model to {output_dir}")
    return TrainResult(metrics=metrics, steps=steps, stopped=False)


def check_unpaired(rows: Dataset, batch_size: int) -> None:
    """KTO's loss needs desirable (label true) and undesirable (label false) examples, and its KL
    estimate pairs each completion with another prompt in the same batch (TRL: batch size > 1)."""
    labels = list(rows["label"]) if len(rows) else []
    good = sum(1 for label in labels if label)
    bad = len(labels) - good
    if good == 0 or bad == 0:
        raise ValueError(
            f"KTO needs both desirable and undesirable examples; the training data has {good} desirable "
            f"(label true) and {bad} undesirable (label false). Collect both good and bad ratings, "
            "or train with DPO on preference pairs."
        )
    if batch_size < 2:
        raise ValueError("KTO needs batch_size of at least 2: its KL term pairs completions within a batch.")
    processes = world_size()
    if per_process_batch_size(batch_size, processes) < 2:
        raise ValueError(
            f"KTO needs at least 2 rows a process in each batch (its KL term pairs completions within a"
            f" process's batch); batch_size {batch_size} over {processes} processes gives"
            f" {batch_size // processes}."
        )


def _prepare_unpaired(rows: Dataset, config: TrainConfig) -> Dataset:
    check_unpaired(rows, config.batch_size)
    # KTO reads its rows in order (see build_kto_config): shuffle them here, seeded.
    return rows.shuffle(seed=config.seed)


SPECS = {
    "reward": _Spec("preference", "preference pairs", RewardTrainer, build_reward_config, policy=False),
    "dpo": _Spec("preference", "preference pairs", DPOTrainer, build_dpo_config, policy=True),
    "kto": _Spec("unpaired", "unpaired examples", KTOTrainer, build_kto_config, policy=True, prepare=_prepare_unpaired),
}
