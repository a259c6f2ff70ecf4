"""Prometheus metrics of the feedback loop, exposed on /metrics with django-prometheus's registry."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

FEEDBACK_TOTAL = Counter(
    "rlhf_feedback_total",
    "Feedback events by kind (thumbs, rating, comment), value, target (message or step) and model version.",
    ["kind", "value", "target", "model_version"],
)
FEEDBACK_RATING = Histogram(
    "rlhf_feedback_rating",
    "Star ratings given, per model version.",
    ["model_version"],
    buckets=(1, 2, 3, 4, 5),
)
SATISFACTION_SCORE = Histogram(
    "rlhf_user_satisfaction_score",
    "Users' satisfaction score (0..1) after each feedback write.",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
COMPARISONS_TOTAL = Counter("rlhf_comparisons_total", "Side-by-side comparisons recorded.", ["outcome"])


def record_feedback(
    *, thumbs: str | None, rating: int | None, comment: bool, target: str, model_version: str, score: float | None
) -> None:
    if thumbs is not None:
        FEEDBACK_TOTAL.labels("thumbs", thumbs, target, model_version).inc()
    if rating is not None:
        FEEDBACK_TOTAL.labels("rating", str(rating), target, model_version).inc()
        FEEDBACK_RATING.labels(model_version).observe(rating)
    if comment:
        FEEDBACK_TOTAL.labels("comment", "present", target, model_version).inc()
    if score is not None:
        SATISFACTION_SCORE.observe(score)
