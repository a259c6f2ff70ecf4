"""The monitor's sequential test: always-valid confidence sequences from the mixture SPRT. No Django.

The monitor looks again every few minutes; a fixed-sample test checked at every look would raise far
more false alarms than its nominal rate. The mixture sequential probability ratio test (mSPRT; Johari,
Pekelis and Walsh, "Always Valid Inference: Bringing Sequential Analysis to A/B Testing", 2017, the
method behind Optimizely's stats engine) gives, for a difference of two proportions with a normal
mixture N(0, tau^2) over the effect, the likelihood ratio against H0: difference = theta

    L(theta) = sqrt(V / (V + tau^2)) * exp(tau^2 (d - theta)^2 / (2 V (V + tau^2)))

with d the observed difference and V its variance. The set of theta with L(theta) < 1/alpha is a
confidence sequence: it covers the true difference at every look at once with probability at least
1 - alpha, however often it is looked at. Its half-width is

    h = sqrt(V (V + tau^2) / tau^2 * (log((V + tau^2) / V) + 2 log(1 / alpha))).

Decisions read the sequence ``[d - h, d + h]`` of (new minus baseline):
- worse (stop a canary, roll back a deploy): the whole sequence is below 0;
- good enough (promote, keep): the whole sequence is above ``-margin`` (not worse than the baseline by
  more than the margin: non-inferiority); a direct deploy is also kept once it has ``deploy_horizon``
  ratings without being found worse (its baseline is a fixed sample, so its sequence stops narrowing);
- otherwise, continue; and below ``min_ratings`` per side, not enough data.
Side-by-side votes (ties count half) are a guard: a sequence for the canary's win rate entirely below
one half also stops it. The error rates this gives are measured by ``bench/monitor_power.py`` with
this code, not assumed. Proportions are smoothed ((x + 0.5) / (n + 1)) in the variance so that a side
with no or only positive ratings does not make it zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

NOT_ENOUGH_DATA = "not_enough_data"
CONTINUE = "continue"
PROMOTE = "promote"
STOP = "stop"
KEEP = "keep"
ROLLBACK = "rollback"
FINAL = frozenset({PROMOTE, STOP, KEEP, ROLLBACK})
MAX_PROJECTION = 1_000_000


@dataclass(frozen=True)
class Settings:
    alpha: float = 0.05  # the sequences cover the truth at every look with probability 1 - alpha
    margin: float = 0.02  # non-inferiority margin on the positive rate
    tau: float = 0.1  # scale of the effects the mixture expects (a 10-point difference)
    min_ratings: int = 100  # per side, before any decision on the positive rate
    min_votes: int = 30  # before side-by-side votes can stop a canary
    # A direct deploy is compared with a fixed sample of the version it replaced, so its sequence never
    # narrows below that sample's noise: after this many ratings with no evidence of harm, keep it.
    deploy_horizon: int = 3000


@dataclass(frozen=True)
class Counts:
    positive: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.positive / self.n if self.n else None


@dataclass(frozen=True)
class Votes:
    """Side-by-side votes between the new version's answers and the baseline's."""

    won: int = 0
    lost: int = 0
    tied: int = 0

    @property
    def n(self) -> int:
        return self.won + self.lost + self.tied

    @property
    def rate(self) -> float | None:
        return (self.won + self.tied / 2) / self.n if self.n else None


@dataclass(frozen=True)
class Sequence:
    estimate: float
    low: float
    high: float
    log_lr0: float  # log L(0) (difference) or log L(1/2) (votes): the evidence against "no difference"


@dataclass(frozen=True)
class Outcome:
    decision: str
    reason: str
    difference: Sequence | None = None
    votes: Sequence | None = None
    needed: int | None = None  # more ratings per side that would likely settle it
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _smoothed(positive: float, n: int) -> float:
    return (positive + 0.5) / (n + 1)


def half_width(variance: float, *, alpha: float, tau: float) -> float:
    tau2 = tau * tau
    return math.sqrt(
        variance * (variance + tau2) / tau2 * (math.log((variance + tau2) / variance) - 2 * math.log(alpha))
    )


def log_lr(estimate: float, theta: float, variance: float, *, tau: float) -> float:
    tau2 = tau * tau
    return 0.5 * math.log(variance / (variance + tau2)) + tau2 * (estimate - theta) ** 2 / (
        2 * variance * (variance + tau2)
    )


def difference_sequence(new: Counts, baseline: Counts, settings: Settings) -> Sequence:
    """The always-valid sequence for (new - baseline) positive rate."""
    p_new, p_base = _smoothed(new.positive, new.n), _smoothed(baseline.positive, baseline.n)
    variance = p_new * (1 - p_new) / new.n + p_base * (1 - p_base) / baseline.n
    estimate = new.positive / new.n - baseline.positive / baseline.n
    h = half_width(variance, alpha=settings.alpha, tau=settings.tau)
    return Sequence(estimate, estimate - h, estimate + h, log_lr(estimate, 0.0, variance, tau=settings.tau))


def vote_sequence(votes: Votes, settings: Settings) -> Sequence:
    """The always-valid sequence for the new version's win rate in side-by-side votes."""
    wins = votes.won + votes.tied / 2
    p = _smoothed(wins, votes.n)
    variance = p * (1 - p) / votes.n
    estimate = wins / votes.n
    h = half_width(variance, alpha=settings.alpha, tau=settings.tau)
    return Sequence(estimate, estimate - h, estimate + h, log_lr(estimate, 0.5, variance, tau=settings.tau))


def ratings_needed(new: Counts, baseline: Counts, settings: Settings) -> int | None:
    """More ratings per side after which, if the rates stayed as they are, the sequence would settle
    (clear of 0 below, or of -margin above); None if it never would (e.g. the rates are equal and a
    margin of 0)."""
    p_new = _smoothed(new.positive, new.n)
    p_base = _smoothed(baseline.positive, baseline.n)
    estimate = p_new - p_base
    target = max(estimate + settings.margin, -estimate)  # room to the nearer boundary it could clear
    if target <= 0:
        return None

    def settles(extra: int) -> bool:
        variance = p_new * (1 - p_new) / (new.n + extra) + p_base * (1 - p_base) / (baseline.n + extra)
        return half_width(variance, alpha=settings.alpha, tau=settings.tau) < target

    if not settles(MAX_PROJECTION):
        return None
    low, high = 0, 1
    while not settles(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if settles(middle) else (middle, high)
    return high


def decide(
    new: Counts, baseline: Counts, settings: Settings, *, votes: Votes | None = None, canary: bool = True
) -> Outcome:
    """The decision for a canary (promote / stop / continue) or a direct deploy (keep / roll back /
    continue) from the positive ratings of each side and, for a canary, the side-by-side votes."""
    good, bad = (PROMOTE, STOP) if canary else (KEEP, ROLLBACK)
    vote_seq = vote_sequence(votes, settings) if votes is not None and votes.n >= settings.min_votes else None
    if vote_seq is not None and vote_seq.high < 0.5:
        return Outcome(
            bad,
            f"side-by-side votes prefer the baseline: win rate {vote_seq.estimate:.3f}, always-valid interval"
            f" [{vote_seq.low:.3f}, {vote_seq.high:.3f}] below 0.5 ({votes.n if votes else 0} votes)",
            votes=vote_seq,
        )
    short = max(settings.min_ratings - new.n, settings.min_ratings - baseline.n, 0)
    if short > 0:
        return Outcome(
            NOT_ENOUGH_DATA,
            f"{new.n} ratings of the new version and {baseline.n} of the baseline; at least {settings.min_ratings}"
            " each are needed",
            votes=vote_seq,
            needed=short,
        )
    seq = difference_sequence(new, baseline, settings)
    figures = (
        f"positive rate {new.rate:.3f} ({new.n} ratings) vs {baseline.rate:.3f} ({baseline.n}),"
        f" difference {seq.estimate:+.3f}, always-valid {1 - settings.alpha:.0%} interval"
        f" [{seq.low:+.3f}, {seq.high:+.3f}]"
    )
    if seq.high < 0:
        return Outcome(bad, f"worse than the baseline: {figures} is below 0", difference=seq, votes=vote_seq)
    if seq.low > -settings.margin:
        return Outcome(
            good,
            f"not worse than the baseline by more than {settings.margin:.3f}: {figures}",
            difference=seq,
            votes=vote_seq,
        )
    if not canary and new.n >= settings.deploy_horizon:
        return Outcome(
            good,
            f"no evidence it is worse after {new.n} ratings (the deploy horizon, {settings.deploy_horizon}): {figures}",
            difference=seq,
        )
    needed = ratings_needed(new, baseline, settings)
    if not canary and needed is not None:
        needed = min(needed, settings.deploy_horizon - new.n)
    more = f"about {needed} more ratings each would likely settle it" if needed else "it may not settle"
    return Outcome(CONTINUE, f"undecided: {figures}; {more}", difference=seq, votes=vote_seq, needed=needed)
