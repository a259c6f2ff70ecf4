"""Why the training defaults are what they are: the small-data regime an operator starts in.

    .venv/bin/python bench/training_defaults.py [--models DIR] [--only reward,dpo,ppo] [--seed 0]

On the bootstrapped models (``--models DIR`` with ``policy/`` and ``reward/``; bootstrapped there,
seeded, when missing) and one hidden preference (``closing_offer``: the answer ends with "Let me know if
you have questions.", once), it builds what a first cycle sees: about a hundred preference pairs from
the policy's own sampled answers (two per question, a pair where exactly one is liked), a quarter
held out, and prompts. Then, for each method, the old defaults against the current ones:

- reward: one epoch (9 optimiser steps) against ``min_steps`` 60: held-out accuracy, mean margin,
  calibration (ECE), also on 200 fresh pairs;
- DPO: against its old ``beta``;
- PPO (scored by the current-default reward model): the old learning rate 1e-5, kl_coef 0.05 and
  48 new tokens against the current defaults.

A policy is measured on 200 fresh questions, answers sampled as the chat samples them (temperature
0.7, top-p 0.95): the share that meets the preference, and the share that repeats the offer (the
tell-tale of over-optimisation). Goals: the preference share rises by at least 25 points, with at
most 10% repeated answers. Django-free; CPU float32; PPO takes minutes per variant.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.ml.config import validate_config  # noqa: E402
from training.ml.evaluation import evaluate_reward, sample_answers  # noqa: E402
from training.ml.preferences import OFFER, PREFERENCES, questions, sampled_pairs  # noqa: E402
from training.ml.progress import RunHooks  # noqa: E402
from training.ml.trainers import train  # noqa: E402

PREFERENCE = "closing_offer"
OLD = {
    "reward": {"min_steps": 0},
    "dpo": {"beta": 0.1, "min_steps": 0},
    "ppo": {"learning_rate": 1e-5, "kl_coef": 0.05, "max_new_tokens": 48, "min_steps": 0},
}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def build_data(policy: Path, work: Path, seed: int) -> Path:
    data = work / "data"
    if (data / "preference" / "train.jsonl").exists():
        return data
    pairs = sampled_pairs(policy, PREFERENCE, count=96, seed=seed + 2, per_question=2)
    random.Random(seed).shuffle(pairs)
    held = len(pairs) // 4
    write_rows(data / "preference" / "test.jsonl", pairs[:held])
    write_rows(data / "preference" / "train.jsonl", pairs[held:])
    prompts = [{"prompt": [{"role": "user", "content": q}]} for q in questions(400, random.Random(seed + 5))]
    write_rows(data / "prompts" / "train.jsonl", prompts[:320])
    write_rows(data / "prompts" / "test.jsonl", prompts[320:])
    write_rows(work / "fresh_pairs.jsonl", sampled_pairs(policy, PREFERENCE, count=200, seed=seed + 3))
    print(f"data: {len(pairs) - held} train pairs, {held} held out, 320 prompts; 200 fresh pairs", flush=True)
    return data


def measure(policy: Path, seed: int) -> dict[str, float]:
    prompts = [[{"role": "user", "content": q}] for q in questions(200, random.Random(seed + 7))]
    answers = sample_answers(policy, prompts, seed=seed)
    likes = PREFERENCES[PREFERENCE]
    n = len(answers)
    return {
        "share": sum(likes(a) for a in answers) / n,
        "repeated": sum(a.count(OFFER) > 1 for a in answers) / n,
    }


def run(kind: str, config: dict[str, Any], *, data: Path, base: Path, out: Path, reward: Path | None = None) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    folder = data / ("prompts" if kind == "ppo" else "preference")
    result = train(
        kind,
        config=validate_config(kind, config),
        data_dir=folder,
        base_dir=base,
        output_dir=out,
        hooks=RunHooks(),
        reward_dir=reward,
    )
    seconds = time.monotonic() - started
    print(f"  {kind} {json.dumps(config)}: {result.steps} steps, {seconds:.0f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=ROOT / "var" / "bench" / "boot")
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "training_defaults")
    parser.add_argument("--only", default="reward,dpo,ppo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    torch.manual_seed(args.seed)
    policy, reward = args.models / "policy", args.models / "reward"
    if not (policy / "config.json").exists():
        from training.ml.bootstrap import bootstrap

        print(f"bootstrapping into {args.models} (seed 0)...", flush=True)
        bootstrap(policy, reward, seed=0)
    work = args.work
    data = build_data(policy, work, args.seed)
    only = set(args.only.split(","))
    results: list[tuple[str, str, dict[str, Any]]] = []
    base_figures = measure(policy, args.seed)
    results.append(("policy", "bootstrapped", base_figures))

    rewards: dict[str, Path] = {}
    for name, config in (("old", OLD["reward"]), ("current", {})):
        if "reward" not in only and not ("ppo" in only and name == "current"):
            continue
        out = work / f"reward-{name}"
        run("reward", {**config, "seed": args.seed}, data=data, base=reward, out=out)
        rewards[name] = out
        held = evaluate_reward(model_dir=out, pairs_path=data / "preference" / "test.jsonl")
        fresh = evaluate_reward(model_dir=out, pairs_path=work / "fresh_pairs.jsonl")
        results.append(
            (
                "reward",
                name,
                {
                    "heldout_accuracy": held["accuracy"],
                    "heldout_pairs": held["pairs"],
                    "margin": held["mean_margin"],
                    "ece": held["calibration_ece"],
                    "fresh_accuracy": fresh["accuracy"],
                    "fresh_pairs": fresh["pairs"],
                },
            )
        )
    for kind in ("dpo", "ppo"):
        if kind not in only:
            continue
        for name, config in (("old", OLD[kind]), ("current", {})):
            out = work / f"{kind}-{name}"
            run(kind, {**config, "seed": args.seed}, data=data, base=policy, out=out, reward=rewards.get("current"))
            results.append((kind, name, measure(out, args.seed)))

    print()
    print(f"{'method':8} {'defaults':13} figures")
    for kind, name, figures in results:
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        print(f"{kind:8} {name:13} {shown}")
    print()
    base = base_figures["share"]
    for kind, name, figures in results:
        if kind in ("dpo", "ppo") and name == "current":
            rise = 100 * (figures["share"] - base)
            ok = rise >= 25 and figures["repeated"] <= 0.10
            repeated = figures["repeated"]
            verdict = "met" if ok else "NOT met"
            print(f"goal {kind}: share +{rise:.1f} points (>= 25), repeated {repeated:.1%} (<= 10%): {verdict}")


if __name__ == "__main__":
    main()
