"""Intervals the analytics and the monitor report: Wilson for proportions (statsmodels), Student's t
for means (scipy). Django-free."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats
from statsmodels.stats.proportion import proportion_confint

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A rate or a mean with its 95% interval; ``value`` None when there is nothing to estimate."""

    value: float | None
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


EMPTY = Estimate(None, None, None, 0)


def proportion(successes: int, n: int, *, confidence: float = CONFIDENCE) -> Estimate:
    """``successes / n`` with its Wilson score interval."""
    if n <= 0:
        return EMPTY
    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    return Estimate(successes / n, float(low), float(high), n)


def mean(total: float | None, total_squares: float | None, n: int, *, confidence: float = CONFIDENCE) -> Estimate:
    """The mean of ``n`` values from their sum and sum of squares, with a Student's t interval (no
    interval for fewer than two values)."""
    if n <= 0 or total is None:
        return EMPTY
    value = total / n
    if n < 2 or total_squares is None:
        return Estimate(value, None, None, n)
    variance = max(0.0, (total_squares - n * value * value) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * math.sqrt(variance / n)
    return Estimate(value, value - half, value + half, n)
