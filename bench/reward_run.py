"""A reward-model training run through the platform against the same ``RewardTrainer`` run as a bare
script, on the same data and settings. Goal (issue 13): the platform at most 1.05x the bare time on
a run of at least 60 s (``"epochs": 8`` took about 60 s here on 2026-11-30, ``"epochs": 3`` on
2026-12-02: the machine's speed varies; README).

    .venv/bin/python bench/reward_run.py [--conversations 2000] [--repeat 3] [--config '{"epochs": 1}']

On a PostgreSQL database of its own (``rlhf_bench_reward``, created and migrated), with tiny
bootstrapped models (trained once, kept under ``var/bench-reward/``) live: seeds rated conversations
(each a comparison and two rated answers), then, alternating, times
- platform: ``training.runner.execute`` as a worker runs it: claim, dataset snapshot from the
  database, checksum check, RewardTrainer with the progress/heartbeat callback, evaluation on the
  held-out pairs (and the base model's, for comparison), checksums and registration;
- bare: ``bench/reward_bare.py`` in a child process on the snapshot's preference train split, with
  the same ``RewardConfig`` (``build_reward_config``): load, train, save.
Prints medians and the ratio, and the platform's time by phase. Both sides also report TRL's own
timing of the training loop (``train_runtime``): the same code on the same data, whose run-to-run
spread here (up to 8% within a set of five) is larger than all the platform adds; so the summary also gives each side's
time outside the loop and the ratio the two would have with loops of equal length (the bare loop's
median plus each side's time outside it), beside the plain ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, ensure_database, setup_django

BENCH_DIR = ROOT / "var" / "bench-reward"
DEFAULT_CONFIG = {"epochs": 1, "batch_size": 16, "max_length": 256, "min_train_rows": 8, "eval_prompts": 16}


def setup(db: str) -> None:
    pg = "postgres://postgres@127.0.0.1:5432"
    ensure_database(pg, db)
    setup_django(
        f"{pg}/{db}",
        CELERY_BROKER_URL="memory://",  # the run is executed here, as a worker would; nothing is sent
        VAR_DIR=str(BENCH_DIR),
        HF_HUB_OFFLINE="1",
        TRL_EXPERIMENTAL_SILENCE="1",
    )
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def ensure_live_models() -> None:
    from models_registry.selectors import live_version
    from tests.helpers import bootstrap_for_tests, make_bootstrapped_live

    if live_version("policy") and live_version("reward"):
        return
    print("bootstrapping tiny models (once) ...", flush=True)
    make_bootstrapped_live(bootstrap_for_tests(str(BENCH_DIR / "models")))


def seed(conversations: int) -> None:
    from django.contrib.auth import get_user_model

    from feedback.models import Conversation
    from tests.training_data import seed_rated_conversations

    user, _ = get_user_model().objects.get_or_create(username="bench-rater")
    if Conversation.objects.filter(user=user).count() == conversations:
        return
    Conversation.objects.filter(user=user).delete()
    print(f"seeding {conversations} rated conversations ...", flush=True)
    seed_rated_conversations(user, conversations, seed=1)


def platform_run(config: dict) -> dict:
    from training import runner, services
    from training.models import TrainingRun

    run = services.training_run_create(kind="reward", config=config)
    started = time.perf_counter()
    status = runner.execute(run.id, worker="bench")
    wall = time.perf_counter() - started
    run = TrainingRun.objects.select_related("dataset", "base_version").get(id=run.id)
    if status != "succeeded":
        raise SystemExit(f"platform run failed: {run.error_message}\n{run.error}")
    train_seconds = run.metrics["train"].get("seconds", 0.0)
    return {
        "wall_seconds": round(wall, 3),
        "dataset_seconds": round(run.dataset.build_seconds, 3),
        "train_seconds": train_seconds,
        # TRL's own timing of the training loop inside trainer.train(), as the bare script's loop_seconds
        "loop_seconds": run.metrics["train"]["train_runtime"],
        "other_seconds": round(wall - run.dataset.build_seconds - train_seconds, 3),
        "steps": run.step,
        "pairs": run.dataset.rows("preference", "train"),
        "eval_accuracy": run.metrics["eval"].get("accuracy"),
        "data_dir": str(Path(run.dataset.path) / "preference"),
        "base_dir": run.base_version.artifact_path,
    }


def bare_run(data_dir: str, base_dir: str, config: dict) -> dict:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reward_bare.py"), data_dir, base_dir, "--config", json.dumps(config)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ).stdout
    # The trainer prints its log dicts to stdout first; the result is the last JSON object.
    return json.loads(out[out.rindex('{\n  "kind"') :])["runs"][0]


def bare_here(data_dir: str, base_dir: str, config: dict) -> dict:
    """The bare script's run, in this process (the one the platform's runs happen in)."""
    from bench.reward_bare import run_once

    return run_once(Path(data_dir), Path(base_dir), config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="rlhf_bench_reward")
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--config", default=json.dumps(DEFAULT_CONFIG), help="the run's config as JSON")
    parser.add_argument(
        "--bare-here",
        action="store_true",
        help="also run the bare script in this process: tells the platform's code from the process it runs in",
    )
    options = parser.parse_args()
    config = json.loads(options.config)
    setup(options.db)
    ensure_live_models()
    seed(options.conversations)
    import trl  # noqa: F401  (imported before timing, as in a worker that has run a task before)

    from training.ml import trainers  # noqa: F401

    platform, bare, here = [], [], []
    for i in range(options.repeat):
        p = platform_run(config)
        b = bare_run(p["data_dir"], p["base_dir"], config)
        platform.append(p)
        bare.append(b)
        if options.bare_here:
            here.append(bare_here(p["data_dir"], p["base_dir"], config))
            print(f"run {i + 1}: bare in this process {here[-1]['wall_seconds']:.1f} s", flush=True)
        print(
            f"run {i + 1}: platform {p['wall_seconds']:.1f} s (dataset {p['dataset_seconds']:.1f}, train"
            f" {p['train_seconds']:.1f} of which the loop {p['loop_seconds']:.1f},"
            f" eval+save+register {p['other_seconds']:.1f}), bare {b['wall_seconds']:.1f} s"
            f" (train {b['train_seconds']:.1f} of which the loop {b['loop_seconds']:.1f}),"
            f" {p['steps']} steps on {p['pairs']} pairs",
            flush=True,
        )
    p_med = statistics.median(r["wall_seconds"] for r in platform)
    b_med = statistics.median(r["wall_seconds"] for r in bare)
    loops = {
        side: statistics.median(r["loop_seconds"] for r in runs)
        for side, runs in (("platform", platform), ("bare", bare))
    }
    outside = {
        side: statistics.median(r["wall_seconds"] - r["loop_seconds"] for r in runs)
        for side, runs in (("platform", platform), ("bare", bare))
    }
    print(
        json.dumps(
            {
                "config": config,
                "conversations": options.conversations,
                "platform_median_seconds": round(p_med, 2),
                "bare_median_seconds": round(b_med, 2),
                "ratio": round(p_med / b_med, 3),
                "platform_phases_median": {
                    key: round(statistics.median(r[key] for r in platform), 2)
                    for key in ("dataset_seconds", "train_seconds", "loop_seconds", "other_seconds")
                },
                "bare_train_median_seconds": round(statistics.median(r["train_seconds"] for r in bare), 2),
                "loop_median_seconds": {side: round(value, 2) for side, value in loops.items()},
                "loop_ratio": round(loops["platform"] / loops["bare"], 3),
                "outside_the_loop_median_seconds": {side: round(value, 2) for side, value in outside.items()},
                "ratio_at_equal_loops": round(
                    (loops["bare"] + outside["platform"]) / (loops["bare"] + outside["bare"]), 3
                ),
                **(
                    {"bare_here_median_seconds": round(statistics.median(r["wall_seconds"] for r in here), 2)}
                    if here
                    else {}
                ),
                "goal": "platform <= 1.05x bare on a run of at least 60 s",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
