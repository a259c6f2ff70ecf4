"""The monitor's error rates, measured by simulation with its real decision code.

    .venv/bin/python bench/monitor_power.py [--sims 2000] [--look-every 10] [--seed 0]

Each simulated monitoring period feeds ratings (each positive with the arm's true rate) to
``training.monitor.stats.decide`` (the function the monitor runs), looking again every
``--look-every`` new ratings of the new version, as the beat task does every few minutes, until it
takes a final decision or the horizon is reached:

- canary: the canary and the live arm gain ratings side by side (``--live-per-canary`` live ratings per
  canary rating; 1 for equal arms, 9 for a 10% canary), and one side-by-side vote arrives every
  ``--ratings-per-vote`` canary ratings (the canary wins a vote with the chance that its answer is
  rated positive and the other negative, a tie when both are rated alike);
- deploy: the new live version gains ratings against a fixed baseline of ``MONITOR_BASELINE_RATINGS``
  ratings of the version it replaced.

It prints, per scenario, how often each decision was taken within the horizon and the median number
of the new version's ratings it took, then the goals: A/A false stop or rollback at most 5%; power at
least 90% to stop or roll back a version 10 points worse (60% -> 50% positive) and to promote one 10
points better (50% -> 60%), within 1,000 ratings per arm. Settings are the monitor's defaults unless
given (``--alpha``, ``--margin``, ``--tau``, ``--min-ratings``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rlhf_site.settings")

from training.monitor import stats


@dataclass(frozen=True)
class Scenario:
    name: str
    mode: str  # canary | deploy
    baseline_rate: float
    new_rate: float
    horizon: int  # ratings of the new version
    wanted: frozenset[str]  # the decisions that are right here
    false: frozenset[str]  # the decisions that count as a false action here


def run(scenario: Scenario, args: argparse.Namespace, settings: stats.Settings) -> dict[str, object]:
    rng = np.random.default_rng([args.seed, zlib.crc32(scenario.name.encode())])  # the same runs every time
    looks = np.arange(args.look_every, scenario.horizon + 1, args.look_every)
    outcomes: dict[str, int] = {}
    needed: list[int] = []
    for _ in range(args.sims):
        new = np.cumsum(rng.random(scenario.horizon) < scenario.new_rate)
        if scenario.mode == "canary":
            live_n = scenario.horizon * args.live_per_canary
            live = np.cumsum(rng.random(live_n) < scenario.baseline_rate)
            vote_draws = rng.random(scenario.horizon // args.ratings_per_vote + 1)
        else:
            baseline = stats.Counts(int((rng.random(args.baseline) < scenario.baseline_rate).sum()), args.baseline)
        decision = None
        for n in looks:
            new_counts = stats.Counts(int(new[n - 1]), int(n))
            if scenario.mode == "canary":
                m = int(n) * args.live_per_canary
                votes = _votes(vote_draws[: int(n) // args.ratings_per_vote], scenario)
                outcome = stats.decide(
                    new_counts, stats.Counts(int(live[m - 1]), m), settings, votes=votes, canary=True
                )
            else:
                outcome = stats.decide(new_counts, baseline, settings, canary=False)
            if outcome.decision in stats.FINAL:
                decision = outcome.decision
                needed.append(int(n))
                break
        key = decision or "none"
        outcomes[key] = outcomes.get(key, 0) + 1
    rates = {key: count / args.sims for key, count in outcomes.items()}
    return {
        "rates": rates,
        "right": sum(rates.get(d, 0.0) for d in scenario.wanted),
        "false": sum(rates.get(d, 0.0) for d in scenario.false),
        "median": statistics.median(needed) if needed else None,
    }


def naive_peeking(args: argparse.Namespace, settings: stats.Settings) -> float:
    """For contrast: how often a fixed-sample two-sided z-test at 5%, checked at every look from
    ``min_ratings`` on, declares the canary worse in an A/A run of 1,000 ratings per arm."""
    rng = np.random.default_rng([args.seed, 99])
    looks = np.arange(max(args.look_every, settings.min_ratings), 1001, args.look_every)
    alarms = 0
    for _ in range(args.sims):
        a, b = np.cumsum(rng.random(1000) < 0.6), np.cumsum(rng.random(1000) < 0.6)
        for n in looks:
            pa, pb = a[n - 1] / n, b[n - 1] / n
            pooled = (a[n - 1] + b[n - 1]) / (2 * n)
            se = (2 * pooled * (1 - pooled) / n) ** 0.5
            if se and (pb - pa) / se < -1.96:
                alarms += 1
                break
    return alarms / args.sims


def _votes(draws: np.ndarray, scenario: Scenario) -> stats.Votes:
    p_new, p_base = scenario.new_rate, scenario.baseline_rate
    win = p_new * (1 - p_base)
    tie = p_new * p_base + (1 - p_new) * (1 - p_base)
    won = int((draws < win).sum())
    tied = int(((draws >= win) & (draws < win + tie)).sum())
    return stats.Votes(won=won, lost=len(draws) - won - tied, tied=tied)


def main() -> None:
    defaults = stats.Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--look-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--live-per-canary", type=int, default=1)
    parser.add_argument("--ratings-per-vote", type=int, default=5)
    parser.add_argument("--baseline", type=int, default=1000, help="ratings of the replaced version (deploy)")
    parser.add_argument("--long-horizon", type=int, default=10000, help="the A/A runs' longer horizon")
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    parser.add_argument("--margin", type=float, default=defaults.margin)
    parser.add_argument("--tau", type=float, default=defaults.tau)
    parser.add_argument("--min-ratings", type=int, default=defaults.min_ratings)
    parser.add_argument("--min-votes", type=int, default=defaults.min_votes)
    parser.add_argument("--deploy-horizon", type=int, default=defaults.deploy_horizon)
    args = parser.parse_args()
    settings = stats.Settings(
        alpha=args.alpha,
        margin=args.margin,
        tau=args.tau,
        min_ratings=args.min_ratings,
        min_votes=args.min_votes,
        deploy_horizon=args.deploy_horizon,
    )
    bad_canary, bad_deploy = frozenset({stats.STOP}), frozenset({stats.ROLLBACK})
    scenarios = [
        Scenario("canary A/A 60% vs 60%", "canary", 0.6, 0.6, 1000, frozenset(), bad_canary),
        Scenario("canary 10 points worse", "canary", 0.6, 0.5, 1000, bad_canary, frozenset({stats.PROMOTE})),
        Scenario("canary 10 points better", "canary", 0.5, 0.6, 1000, frozenset({stats.PROMOTE}), bad_canary),
        Scenario(
            f"canary A/A, {args.long_horizon:,} ratings", "canary", 0.6, 0.6, args.long_horizon, frozenset(), bad_canary
        ),
        Scenario("deploy A/A 60% vs 60%", "deploy", 0.6, 0.6, 1000, frozenset(), bad_deploy),
        Scenario("deploy 10 points worse", "deploy", 0.6, 0.5, 1000, bad_deploy, frozenset({stats.KEEP})),
        Scenario("deploy 10 points better", "deploy", 0.5, 0.6, 1000, frozenset({stats.KEEP}), bad_deploy),
        Scenario(
            f"deploy A/A, {args.long_horizon:,} ratings", "deploy", 0.6, 0.6, args.long_horizon, frozenset(), bad_deploy
        ),
    ]
    print(
        f"{args.sims} simulations per scenario, a look every {args.look_every} ratings; alpha {settings.alpha},"
        f" margin {settings.margin}, tau {settings.tau}, at least {settings.min_ratings} ratings a side;"
        f" canary: {args.live_per_canary} live rating(s) per canary rating, a vote every {args.ratings_per_vote};"
        f" deploy: a baseline of {args.baseline} ratings\n"
    )
    header = f"{'scenario':34} {'promote/keep':>12} {'stop/rollback':>13} {'undecided':>9} {'median n':>8}  seconds"
    print(header)
    print("-" * len(header))
    results = {}
    for scenario in scenarios:
        if "A/A," in scenario.name:  # the long horizon: fewer runs, looks as often relative to its length
            long_args = argparse.Namespace(**{**vars(args), "sims": max(200, args.sims // 4), "look_every": 50})
            started = time.perf_counter()
            result = run(scenario, long_args, settings)
        else:
            started = time.perf_counter()
            result = run(scenario, args, settings)
        results[scenario.name] = result
        rates = result["rates"]
        good = rates.get(stats.PROMOTE, 0) + rates.get(stats.KEEP, 0)
        bad = rates.get(stats.STOP, 0) + rates.get(stats.ROLLBACK, 0)
        median = f"{result['median']:.0f}" if result["median"] is not None else "-"
        print(
            f"{scenario.name:34} {good:12.1%} {bad:13.1%} {rates.get('none', 0):9.1%} {median:>8}"
            f"  {time.perf_counter() - started:7.1f}"
        )
    print(
        f"\nFor contrast, a fixed-sample z-test (5%, two-sided) checked at every look declares an equally good"
        f" canary worse in {naive_peeking(args, settings):.1%} of A/A runs within 1,000 ratings (its nominal"
        " rate for that side is 2.5%)."
    )
    print("\nGoals:")
    checks = [
        ("canary A/A false stops <= 5%", results["canary A/A 60% vs 60%"]["false"] <= 0.05),
        ("canary: stops a 10-point worse one >= 90% within 1,000", results["canary 10 points worse"]["right"] >= 0.9),
        (
            "canary: promotes a 10-point better one >= 90% within 1,000",
            results["canary 10 points better"]["right"] >= 0.9,
        ),
        ("deploy A/A false rollbacks <= 5%", results["deploy A/A 60% vs 60%"]["false"] <= 0.05),
        (
            "deploy: rolls back a 10-point worse one >= 90% within 1,000",
            results["deploy 10 points worse"]["right"] >= 0.9,
        ),
    ]
    for text, met in checks:
        print(f"  {text}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
