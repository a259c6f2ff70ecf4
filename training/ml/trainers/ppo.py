"""PPO with TRL 1.12's ``trl.experimental.ppo.PPOTrainer`` (the last TRL release that has it). No Django.

Gotchas of that trainer, handled here:

- It runs its own loop: it calls ``on_step_end`` but never reads ``control.should_training_stop``,
  so cancellation raises ``TrainingStopped`` from the callback (``raise_on_stop``).
- Rollouts are generated from left-padded prompt ids (``input_ids``), so the tokenizer pads left
  while training; the saved tokenizer pads right again, like the base's.
- ``trainer.model`` wraps the policy and the value model; only the policy is saved.
- Its ``Accelerator`` and dataloader (``drop_last=True``) need at least one full rollout batch
  (``batch_size * gradient_accumulation_steps`` prompts).
- It trains on several processes as it is (``training.ml.launch``; tried with 2 CPU processes on
  gloo): each rolls out ``batch_size / processes`` prompts a step, and TRL gathers the scores and
  advantages across them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from trl.experimental.ppo import PPOTrainer

from training.ml.callbacks import HooksCallback, TrainingStopped
from training.ml.config import TrainConfig, with_min_steps
from training.ml.data import load_split
from training.ml.distributed import is_main_process
from training.ml.progress import RunHooks, TrainResult
from training.ml.scratch import scratch_dir
from training.ml.trainers.common import (
    base_generation_config,
    build_ppo_config,
    check_same_vocabulary,
    clean_metrics,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    quiet,
    require_rows,
    save_checkpoint,
)

# PPO log key -> metric name in TrainResult.metrics
PPO_METRICS = {
    "objective/scores": "mean_score",
    "objective/kl": "kl",
    "objective/rlhf_reward": "rlhf_reward",
    "objective/entropy": "entropy",
    "loss/policy_avg": "policy_loss",
    "loss/value_avg": "value_loss",
    "policy/approxkl_avg": "approx_kl",
    "val/num_eos_tokens": "eos_tokens",
}


def tokenize_prompts(
    rows: Dataset, tokenizer: PreTrainedTokenizerBase, *, max_prompt_tokens: int
) -> tuple[Dataset, int]:
    """Each prompt rendered with the chat template and ``add_generation_prompt=True`` as ``input_ids``;
    prompts longer than ``max_prompt_tokens`` are dropped. Returns (dataset, dropped)."""
    kept: list[dict[str, list[int]]] = []
    for messages in rows["prompt"]:
        encoded: Any = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        ids = list(encoded["input_ids"])
        if len(ids) <= max_prompt_tokens:
            kept.append({"input_ids": ids})
    return Dataset.from_list(kept), len(rows) - len(kept)


def _rollout_prompts(
    config: TrainConfig, data_dir: Path, tokenizer: PreTrainedTokenizerBase, hooks: RunHooks
) -> tuple[Dataset, int]:
    """The train split's prompts, tokenized, those too long for ``max_length`` dropped; (dataset, rows
    read). At least one rollout batch must remain."""
    prompts = load_split(data_dir, "train", "prompts")
    rollout_batch = config.batch_size * config.gradient_accumulation_steps
    require_rows(len(prompts), rollout_batch, "prompts")
    max_prompt_tokens = config.max_length - config.max_new_tokens
    if max_prompt_tokens < 1:
        raise ValueError(
            f"max_length ({config.max_length}) must exceed max_new_tokens ({config.max_new_tokens}) for PPO."
        )
    dataset, dropped = tokenize_prompts(prompts, tokenizer, max_prompt_tokens=max_prompt_tokens)
    if dropped:
        hooks.log(f"dropped {dropped} prompts longer than {max_prompt_tokens} tokens")
    require_rows(len(dataset), rollout_batch, f"prompts that fit in {max_prompt_tokens} tokens")
    return dataset, len(prompts)


def _metrics(
    callback: HooksCallback, *, steps: int, rollout_batch: int, rows: int, usable: int, started: float
) -> dict:
    history = [h for h in callback.history if "objective/scores" in h]
    raw: dict[str, Any] = {metric: callback.latest.get(key) for key, metric in PPO_METRICS.items()}
    if history:
        raw["first_mean_score"] = history[0]["objective/scores"]
        raw["train_loss"] = history[-1].get("loss/policy_avg")
    raw.update(
        {
            "steps": steps,
            "samples": steps * rollout_batch,
            "train_rows": rows,
            "usable_train_rows": usable,
            "eval_note": "PPO has no test-split loss; see the policy evaluation",
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return clean_metrics(raw)


def train_ppo(
    *, config: TrainConfig, data_dir: Path, base_dir: Path, output_dir: Path, hooks: RunHooks, reward_dir: Path
) -> TrainResult:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(base_dir)
    check_same_vocabulary(tokenizer, load_tokenizer(reward_dir), "reward model")
    dataset, rows = _rollout_prompts(config, data_dir, tokenizer, hooks)
    config = with_min_steps(config, len(dataset))
    tokenizer.padding_side = "left"

    policy = load_causal_lm(base_dir)
    reference = load_causal_lm(base_dir)
    reward_model = load_reward_model(reward_dir, tokenizer).eval()
    value_model = load_reward_model(reward_dir, tokenizer)
    callback = HooksCallback(hooks, raise_on_stop=True)
    with scratch_dir() as scratch:
        args = build_ppo_config(config, scratch, rows=len(dataset))
        trainer = PPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=policy,
            ref_model=reference,
            reward_model=reward_model,
            value_model=value_model,
            train_dataset=dataset,
            eval_dataset=None,
            callbacks=[callback],
        )
        quiet(trainer)
        stopped = False
        try:
            trainer.train()
        except TrainingStopped:
            stopped = True
            callback.report(force=True)
        steps = int(trainer.state.global_step)
        metrics = _metrics(
            callback,
            steps=steps,
            rollout_batch=config.batch_size * config.gradient_accumulation_steps,
            rows=rows,
            usable=len(dataset),
            started=started,
        )
        if stopped:
            return TrainResult(metrics=metrics, steps=steps, stopped=True)
        if is_main_process():  # every process holds the same weights after the last all-reduce
            trained = trainer.accelerator.unwrap_model(trainer.model).policy
            trained.eval()
            save_checkpoint(trained, tokenizer, output_dir, generation_config=base_generation_config(base_dir))
            hooks.log(f"saved the policy to {output_dir}")
        return TrainResult(metrics=metrics, steps=steps, stopped=False)
