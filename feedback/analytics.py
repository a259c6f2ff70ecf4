"""Per-version analytics: how the answers a policy version served were received.

From the answers it served (``Message.model_version``) and the feedback on them:

- ``served``: answers; ``stopped_failed``: share of them stopped or failed;
- ``rated``: answers with message-level thumbs or stars; ``positive``: share of those ratings that are
  positive (thumbs up; where only stars were given, 4 or 5 stars), one per user and answer;
- ``rating``: mean stars; ``step_down``: share of step ratings that are ✗;
- ``length``: mean answer length in tokens; ``ttft_ms``: mean time to first token;
- ``comparisons``: side-by-side votes won, lost and tied against each other version.

Proportions come with Wilson 95% intervals, means with Student's t intervals (``core.stats``). Each is
given over a window (the version's whole life by default) and per day of the answer.

The queries read one version's answers through ``message_version_time`` (model_version, created_at)
and their feedback through the feedback's message index; see ``bench/analytics.py`` for the figure on a
million feedback rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.db.models import Case, Count, F, FloatField, Q, QuerySet, Sum, When
from django.db.models.functions import Cast, TruncDate

from core.stats import EMPTY, Estimate, mean, proportion
from feedback.models import Comparison, Feedback, Message
from models_registry.models import ModelVersion

POSITIVE = Q(thumbs=Feedback.Thumbs.UP) | Q(thumbs__isnull=True, rating__gte=4)
SCORED = Q(thumbs__isnull=False) | Q(rating__isnull=False)


@dataclass(frozen=True)
class Period:
    served: int
    stopped_failed: Estimate
    rated: int
    positive: Estimate
    rating: Estimate
    step_down: Estimate
    length: Estimate
    ttft_ms: Estimate

    def as_dict(self) -> dict[str, Any]:
        return {
            name: value.as_dict() if isinstance(value, Estimate) else value for name, value in self.__dict__.items()
        }


@dataclass(frozen=True)
class Day:
    day: date
    served: int
    rated: int
    positive: Estimate

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "served": self.served,
            "rated": self.rated,
            "positive": self.positive.as_dict(),
        }


@dataclass(frozen=True)
class VersionAnalytics:
    version: str
    since: datetime | None
    until: datetime | None
    total: Period
    days: list[Day] = field(default_factory=list)
    comparisons: dict[str, dict[str, int]] = field(default_factory=dict)  # opponent -> won/lost/tied

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "since": self.since,
            "until": self.until,
            "total": self.total.as_dict(),
            "days": [day.as_dict() for day in self.days],
            "comparisons": self.comparisons,
        }


def answers_of(version_id: int, *, since: datetime | None = None, until: datetime | None = None) -> QuerySet[Message]:
    answers = Message.objects.filter(model_version_id=version_id, role=Message.Role.ASSISTANT)
    if since is not None:
        answers = answers.filter(created_at__gte=since)
    if until is not None:
        answers = answers.filter(created_at__lt=until)
    return answers


def _ratings(version_id: int, since: datetime | None, until: datetime | None) -> QuerySet[Feedback]:
    ratings = Feedback.objects.filter(message__model_version_id=version_id, message__role=Message.Role.ASSISTANT)
    if since is not None:
        ratings = ratings.filter(message__created_at__gte=since)
    if until is not None:
        ratings = ratings.filter(message__created_at__lt=until)
    return ratings


def _squares(name: str, *, where: Q | None = None) -> Sum:
    return Sum(Cast(F(name), FloatField()) * Cast(F(name), FloatField()), filter=where)


def period(version_id: int, *, since: datetime | None = None, until: datetime | None = None) -> Period:
    # Lengths: a failed answer has none worth averaging; a stopped one counts what it produced.
    produced = ~Q(status=Message.Status.FAILED)
    answers = answers_of(version_id, since=since, until=until).aggregate(
        served=Count("id"),
        stopped_failed=Count("id", filter=Q(status__in=[Message.Status.STOPPED, Message.Status.FAILED])),
        lengths=Count("token_count", filter=produced),
        length_sum=Sum("token_count", filter=produced),
        length_squares=_squares("token_count", where=produced),
        ttfts=Count("time_to_first_token_ms"),
        ttft_sum=Sum("time_to_first_token_ms"),
        ttft_squares=_squares("time_to_first_token_ms"),
    )
    ratings = _ratings(version_id, since, until)
    message_level = ratings.filter(step__isnull=True).aggregate(
        scored=Count("id", filter=SCORED),
        positive=Count("id", filter=SCORED & POSITIVE),
        rated=Count("message_id", filter=SCORED, distinct=True),
        stars=Count("rating"),
        star_sum=Sum("rating"),
        star_squares=_squares("rating"),
    )
    steps = ratings.filter(step__isnull=False, thumbs__isnull=False).aggregate(
        n=Count("id"), down=Count("id", filter=Q(thumbs=Feedback.Thumbs.DOWN))
    )
    return Period(
        served=answers["served"],
        stopped_failed=proportion(answers["stopped_failed"], answers["served"]),
        rated=message_level["rated"],
        positive=proportion(message_level["positive"], message_level["scored"]),
        rating=mean(message_level["star_sum"], message_level["star_squares"], message_level["stars"]),
        step_down=proportion(steps["down"], steps["n"]),
        length=mean(answers["length_sum"], answers["length_squares"], answers["lengths"]),
        ttft_ms=mean(answers["ttft_sum"], answers["ttft_squares"], answers["ttfts"]),
    )


def days(version_id: int, *, since: datetime | None = None, until: datetime | None = None) -> list[Day]:
    served = dict(
        answers_of(version_id, since=since, until=until)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(n=Count("id"))
        .values_list("day", "n")
    )
    rated = {
        row["day"]: row
        for row in _ratings(version_id, since, until)
        .filter(SCORED, step__isnull=True)
        .annotate(day=TruncDate("message__created_at"))
        .values("day")
        .annotate(
            scored=Count("id"),
            positive=Count(Case(When(POSITIVE, then=1))),
            rated=Count("message_id", distinct=True),
        )
    }
    return [
        Day(
            day=day,
            served=served.get(day, 0),
            rated=rated[day]["rated"] if day in rated else 0,
            positive=proportion(rated[day]["positive"], rated[day]["scored"]) if day in rated else EMPTY,
        )
        for day in sorted(set(served) | set(rated))
    ]


def comparisons(version_id: int, *, since: datetime | None = None, until: datetime | None = None) -> dict:
    """Side-by-side votes between this version's answers and another version's, by opponent:
    ``{"policy:2": {"won": 3, "lost": 1, "tied": 0}}``."""
    votes = Comparison.objects.filter(
        Q(chosen__model_version_id=version_id) | Q(rejected__model_version_id=version_id)
    ).exclude(chosen__model_version_id=F("rejected__model_version_id"))
    if since is not None:
        votes = votes.filter(updated_at__gte=since)
    if until is not None:
        votes = votes.filter(updated_at__lt=until)
    rows = list(votes.values_list("chosen__model_version_id", "rejected__model_version_id", "is_tie"))
    opponents = {rejected if chosen == version_id else chosen for chosen, rejected, _ in rows}
    labels = {v.pk: v.label for v in ModelVersion.objects.filter(pk__in=opponents - {None})}
    table: dict[str, dict[str, int]] = {}
    for chosen, rejected, is_tie in rows:
        opponent = rejected if chosen == version_id else chosen
        name = labels.get(opponent, "no version")
        counts = table.setdefault(name, {"won": 0, "lost": 0, "tied": 0})
        counts["tied" if is_tie else "won" if chosen == version_id else "lost"] += 1
    return dict(sorted(table.items()))


def version_analytics(
    version: ModelVersion, *, since: datetime | None = None, until: datetime | None = None
) -> VersionAnalytics:
    return VersionAnalytics(
        version=version.label,
        since=since,
        until=until,
        total=period(version.pk, since=since, until=until),
        days=days(version.pk, since=since, until=until),
        comparisons=comparisons(version.pk, since=since, until=until),
    )


# --- What the monitor compares ---------------------------------------------------------------------


def rating_counts(
    version_id: int,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    per_user: int | None = None,
    last: int | None = None,
) -> tuple[int, int]:
    """(positive, rated) over the message-level ratings of the version's answers served in the
    window, newest first: each user counts at most ``per_user`` times (their newest ratings), so one
    prolific rater cannot decide, and at most the ``last`` newest ratings count."""
    rows = (
        _ratings(version_id, since, until)
        .filter(SCORED, step__isnull=True)
        .annotate(good=Case(When(POSITIVE, then=1), default=0))
        .order_by("-message__created_at", "-id")
        .values_list("user_id", "good")
    )
    seen: dict[int, int] = {}
    positive = rated = 0
    for user_id, good in rows.iterator(chunk_size=2000):
        if per_user is not None and seen.get(user_id, 0) >= per_user:
            continue
        seen[user_id] = seen.get(user_id, 0) + 1
        positive += good
        rated += 1
        if last is not None and rated >= last:
            break
    return positive, rated


def vote_counts(
    version_id: int, other_id: int, *, since: datetime | None = None, per_user: int | None = None
) -> tuple[int, int, int]:
    """(won, lost, tied) of ``version_id``'s answers in side-by-side votes against ``other_id``'s,
    newest first, each user counted at most ``per_user`` times."""
    pair = Q(chosen__model_version_id=version_id, rejected__model_version_id=other_id) | Q(
        chosen__model_version_id=other_id, rejected__model_version_id=version_id
    )
    votes = Comparison.objects.filter(pair)
    if since is not None:
        votes = votes.filter(updated_at__gte=since)
    seen: dict[int, int] = {}
    won = lost = tied = 0
    rows = votes.order_by("-updated_at", "-id").values_list("user_id", "chosen__model_version_id", "is_tie")
    for user_id, chosen, is_tie in rows.iterator(chunk_size=2000):
        if per_user is not None and seen.get(user_id, 0) >= per_user:
            continue
        seen[user_id] = seen.get(user_id, 0) + 1
        if is_tie:
            tied += 1
        elif chosen == version_id:
            won += 1
        else:
            lost += 1
    return won, lost, tied
