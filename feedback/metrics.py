"""Prometheus metrics of the feedback loop, exposed on /metrics with django-prometheus's registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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


TIME_TO_FIRST_TOKEN = Histogram(
    "rlhf_chat_time_to_first_token_seconds",
    "Time from asking the policy to its first token, per model version.",
    ["model_version"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
TOKENS_PER_SECOND = Histogram(
    "rlhf_chat_tokens_per_second",
    "Streaming speed of each answer after its first token, per model version.",
    ["model_version"],
    buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000),
)
GENERATED_TOKENS = Counter("rlhf_chat_generated_tokens_total", "Tokens streamed to users.", ["model_version"])
ACTIVE_STREAMS = Gauge(
    "rlhf_chat_active_streams",
    "Answers being streamed now, per model version.",
    ["model_version"],
    multiprocess_mode="livesum",  # with several processes: the sum over the live ones
)


def record_generation(*, model_version: str, ttft: float, tokens: int, seconds: float) -> None:
    TIME_TO_FIRST_TOKEN.labels(model_version).observe(ttft)
    GENERATED_TOKENS.labels(model_version).inc(tokens)
    if seconds > 0 and tokens > 1:
        TOKENS_PER_SECOND.labels(model_version).observe((tokens - 1) / seconds)


CANARY_ASSIGNMENTS = Counter(
    "rlhf_canary_assignments_total", "Conversations drawn into a canary's arms, per kind and arm.", ["kind", "arm"]
)
