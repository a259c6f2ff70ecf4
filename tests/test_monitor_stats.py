"""The monitor's sequential test on its own (no database)."""

from __future__ import annotations

import random

import pytest

from training.monitor import stats

SETTINGS = stats.Settings()


def test_the_sequence_is_centred_on_the_observed_difference_and_narrows_with_more_ratings():
    small = stats.difference_sequence(stats.Counts(60, 100), stats.Counts(50, 100), SETTINGS)
    large = stats.difference_sequence(stats.Counts(600, 1000), stats.Counts(500, 1000), SETTINGS)
    assert small.estimate == pytest.approx(0.1) == large.estimate
    assert small.low < large.low < 0.1 < large.high < small.high


def test_it_is_wider_than_a_fixed_sample_interval_which_would_not_survive_peeking():
    seq = stats.difference_sequence(stats.Counts(550, 1000), stats.Counts(500, 1000), SETTINGS)
    fixed_half = 1.96 * (0.55 * 0.45 / 1000 + 0.25 / 1000) ** 0.5
    assert seq.high - seq.estimate > fixed_half


def test_ratings_needed_is_what_it_takes_for_the_sequence_to_settle_if_rates_hold():
    new, base = stats.Counts(62, 100), stats.Counts(55, 100)
    needed = stats.ratings_needed(new, base, SETTINGS)
    assert needed is not None
    scale = (100 + needed) / 100
    later = stats.difference_sequence(
        stats.Counts(round(62 * scale), 100 + needed), stats.Counts(round(55 * scale), 100 + needed), SETTINGS
    )
    assert later.low > -SETTINGS.margin


def test_a_seeded_a_a_simulation_stays_under_its_false_stop_rate():
    rng = random.Random(1)
    stops = 0
    runs = 200
    for _ in range(runs):
        a = b = 0
        for n in range(10, 1001, 10):
            a += sum(rng.random() < 0.6 for _ in range(10))
            b += sum(rng.random() < 0.6 for _ in range(10))
            outcome = stats.decide(stats.Counts(a, n), stats.Counts(b, n), SETTINGS)
            if outcome.decision in stats.FINAL:
                stops += outcome.decision == stats.STOP
                break
    assert stops / runs <= 0.05


def test_votes_below_the_minimum_are_not_used():
    outcome = stats.decide(
        stats.Counts(0, 10), stats.Counts(0, 10), SETTINGS, votes=stats.Votes(won=0, lost=SETTINGS.min_votes - 1)
    )
    assert outcome.decision == stats.NOT_ENOUGH_DATA
    assert outcome.votes is None
