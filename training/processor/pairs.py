"""Labels, scores and preference pairs: the rules, with no database and no files.

See the package docstring for the rules in words.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

SCORE_EPSILON = 1e-9
# Same-prompt pairs (rule c) take at most this many rated answers per prompt: the memory one
# prompt asked thousands of times may take.
SAME_PROMPT_CAP = 256


def feedback_value(thumbs: str | None, rating: int | None) -> float | None:
    """As ``Feedback.value``: thumbs 1 (up) or 0 (down), a rating (r - 1) / 4, both: their mean."""
    parts: list[float] = []
    if thumbs is not None:
        parts.append(1.0 if thumbs == "up" else 0.0)
    if rating is not None:
        parts.append((rating - 1) / 4)
    return sum(parts) / len(parts) if parts else None


def feedback_label(thumbs: str | None, rating: int | None, *, good: int, bad: int) -> bool | str | None:
    """One feedback row's label: True, False, "neutral" (a rating between the thresholds), or None
    (no thumbs and no rating). A rating, when given, decides, whatever the thumbs say."""
    if rating is not None:
        if rating >= good:
            return True
        if rating <= bad:
            return False
        return "neutral"
    if thumbs is not None:
        return thumbs == "up"
    return None


def majority(labels: Iterable[bool]) -> bool | None:
    """The label most votes give; None on a tie (or no votes)."""
    yes = no = 0
    for label in labels:
        if label:
            yes += 1
        else:
            no += 1
    if yes == no:
        return None
    return yes > no


@dataclass
class Settled:
    pairs: list[tuple[object, object]]  # (chosen, rejected)
    settled: int  # pairs with votes both ways where the majority decided
    dropped: int  # pairs with as many votes each way


def settle_votes(votes: dict[tuple[K, K], int]) -> Settled:
    """Votes per ordered pair (a over b) -> one (chosen, rejected) per unordered pair: the majority
    direction wins; equal votes drop the pair. Pairs come out in the order they were first voted."""
    pairs: list[tuple[object, object]] = []
    settled = dropped = 0
    done: set[tuple[K, K]] = set()
    for (a, b), ab in votes.items():
        if (a, b) in done:
            continue
        done.add((b, a))
        ba = votes.get((b, a), 0)
        if ab == ba:
            dropped += 1
            continue
        if ab and ba:
            settled += 1
        pairs.append((a, b) if ab > ba else (b, a))
    return Settled(pairs, settled, dropped)


def score_votes(scores: dict[K, float], votes: dict[tuple[K, K], int]) -> None:
    """Add one vote for the better-scored answer of every pair whose scores differ."""
    items = list(scores.items())
    for i, (a, score_a) in enumerate(items):
        for b, score_b in items[i + 1 :]:
            if score_a - score_b > SCORE_EPSILON:
                votes[(a, b)] = votes.get((a, b), 0) + 1
            elif score_b - score_a > SCORE_EPSILON:
                votes[(b, a)] = votes.get((b, a), 0) + 1


@dataclass(frozen=True)
class RatedAnswer:
    conversation: str
    side: str
    score: float
    content: str


def same_prompt_pairs(answers: list[RatedAnswer]) -> Iterator[tuple[RatedAnswer, RatedAnswer]]:
    """(chosen, rejected) pairs of rule (c), linear in the answers: sorted best first, the i-th of
    the better half is paired with the i-th of the worse half, when their scores differ and they
    come from different conversations (same-conversation pairs are rule b's)."""
    ranked = sorted(answers, key=lambda a: -a.score)  # stable: ties keep conversation order
    half = (len(ranked) + 1) // 2
    for better, worse in zip(ranked[:half], ranked[half:], strict=False):
        if better.conversation != worse.conversation and better.score - worse.score > SCORE_EPSILON:
            yield better, worse
