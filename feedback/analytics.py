"""Per-version analytics: how the answers a policy version served were received.

From the answers it served (``Message.model_version``) and the feedback on them:

- ``served``: answers; ``stopped_failed``: share of them stopped or failed;
- ``rated``: answers with message-level thumbs or stars; ``positive``: share of those ratings that are
  positive (thumbs up; where only stars were given, 4 or 5 stars), one per user and answer;
- ``rating``: mean stars; ``step_down``: share of step ratings that are ✗;
- ``length``: mean answer length in tokens; ``ttft_ms``: mean time to first token;
- ``comparisons``: side-by-side votes won, lost and tied against each other version.

Proportions come with Wilson 95% intervals, means with Student's t intervals (``core.stats``). Each is
given over a window (the version's whole life by default) and per day. Answers count on the day they
were served, ratings on the day they were given.

A feedback row carries its answer's version (copied when it is given), so a version's ratings are one
range of the ``feedback_version_time`` index (model_version, created_at) and its answers one range of
``message_version_time``: no join of answers and feedback. ``bench/analytics.py`` has the figures on a
million feedback rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.db.models import Count, F, FloatField, Q, QuerySet, Subquery, Sum, Window
from django.db.models.functions import Cast, RowNumber, TruncDate

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
    ratings = Feedback.objects.filter(model_version_id=version_id)
    if since is not None:
        ratings = ratings.filter(created_at__gte=since)
    if until is not None:
        ratings = ratings.filter(created_at__lt=until)
    return ratings


def _squares(name: str, *, where: Q | None = None) -> Sum:
    return Sum(Cast(F(name), FloatField()) * Cast(F(name), FloatField()), filter=where)


def _answer_sums(version_id: int, since: datetime | None, until: datetime | None) -> dict[date, dict[str, Any]]:
    """Per day served: counts, and sums and sums of squares for the means (they add up over days)."""
    # Lengths: a failed answer has none worth averaging; a stopped one counts what it produced.
    produced = ~Q(status=Message.Status.FAILED)
    rows = (
        answers_of(version_id, since=since, until=until)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(
            served=Count("id"),
            stopped_failed=Count("id", filter=Q(status__in=[Message.Status.STOPPED, Message.Status.FAILED])),
            lengths=Count("token_count", filter=produced),
            length_sum=Sum("token_count", filter=produced),
            length_squares=_squares("token_count", where=produced),
            ttfts=Count("time_to_first_token_ms"),
            ttft_sum=Sum("time_to_first_token_ms"),
            ttft_squares=_squares("time_to_first_token_ms"),
        )
        .order_by()
    )
    return {row.pop("day"): row for row in rows}


def _rating_sums(version_id: int, since: datetime | None, until: datetime | None) -> dict[date, dict[str, Any]]:
    """Per day given: message-level ratings, positive ones, and the stars' sums."""
    rows = (
        _ratings(version_id, since, until)
        .filter(step__isnull=True)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(
            # One message-level row per answer (only the conversation's owner may rate its answers), so
            # scored rows are rated answers.
            scored=Count("id", filter=SCORED),
            positive=Count("id", filter=SCORED & POSITIVE),
            stars=Count("rating"),
            star_sum=Sum("rating"),
            star_squares=_squares("rating"),
        )
        .order_by()
    )
    return {row.pop("day"): row for row in rows}


def _total(rows: dict[date, dict[str, Any]], name: str) -> Any:
    values = [row[name] for row in rows.values() if row[name] is not None]
    return sum(values) if values else None


def _period(answers: dict[date, dict[str, Any]], ratings: dict[date, dict[str, Any]], steps: dict) -> Period:
    def a(name: str) -> Any:
        return _total(answers, name)

    def r(name: str) -> Any:
        return _total(ratings, name)

    return Period(
        served=a("served") or 0,
        stopped_failed=proportion(a("stopped_failed") or 0, a("served") or 0),
        rated=r("scored") or 0,
        positive=proportion(r("positive") or 0, r("scored") or 0),
        rating=mean(r("star_sum"), r("star_squares"), r("stars") or 0),
        step_down=proportion(steps["down"], steps["n"]),
        length=mean(a("length_sum"), a("length_squares"), a("lengths") or 0),
        ttft_ms=mean(a("ttft_sum"), a("ttft_squares"), a("ttfts") or 0),
    )


def _step_sums(version_id: int, since: datetime | None, until: datetime | None) -> dict[str, int]:
    return (
        _ratings(version_id, since, until)
        .filter(step__isnull=False, thumbs__isnull=False)
        .aggregate(n=Count("id"), down=Count("id", filter=Q(thumbs=Feedback.Thumbs.DOWN)))
    )


def _days(answers: dict[date, dict[str, Any]], ratings: dict[date, dict[str, Any]]) -> list[Day]:
    return [
        Day(
            day=day,
            served=answers[day]["served"] if day in answers else 0,
            rated=ratings[day]["scored"] if day in ratings else 0,
            positive=proportion(ratings[day]["positive"], ratings[day]["scored"]) if day in ratings else EMPTY,
        )
        for day in sorted(set(answers) | set(ratings))
    ]


def period(version_id: int, *, since: datetime | None = None, until: datetime | None = None) -> Period:
    return _period(
        _answer_sums(version_id, since, until),
        _rating_sums(version_id, since, until),
        _step_sums(version_id, since, until),
    )


def days(version_id: int, *, since: datetime | None = None, until: datetime | None = None) -> list[Day]:
    return _days(_answer_sums(version_id, since, until), _rating_sums(version_id, since, until))


def comparisons(version_id: int, *, since: datetime | None = None, until: datetime | None = None) -> dict:
    """Side-by-side votes between this version's answers and another version's, by opponent:
    ``{"policy:2": {"won": 3, "lost": 1, "tied": 0}}``. Two grouped queries, one per side the version's
    answer was on, each reading its answers by the version index."""
    votes = Comparison.objects.all()
    if since is not None:
        votes = votes.filter(updated_at__gte=since)
    if until is not None:
        votes = votes.filter(updated_at__lt=until)
    rows: list[tuple[int | None, bool, str, int]] = []
    for side, other in (("chosen", "rejected"), ("rejected", "chosen")):
        grouped = (
            votes.filter(**{f"{side}_version_id": version_id})
            .exclude(**{f"{other}_version_id": version_id})
            .values_list(f"{other}_version_id", "is_tie")
            .annotate(n=Count("id"))
            .order_by()
        )
        rows += [(opponent, is_tie, side, n) for opponent, is_tie, n in grouped]
    labels = {v.pk: v.label for v in ModelVersion.objects.filter(pk__in={row[0] for row in rows} - {None})}
    table: dict[str, dict[str, int]] = {}
    for opponent, is_tie, side, n in rows:
        name = labels.get(opponent, "no version") if opponent is not None else "no version"
        counts = table.setdefault(name, {"won": 0, "lost": 0, "tied": 0})
        counts["tied" if is_tie else "won" if side == "chosen" else "lost"] += n
    return dict(sorted(table.items()))


def version_analytics(
    version: ModelVersion, *, since: datetime | None = None, until: datetime | None = None
) -> VersionAnalytics:
    """Everything above in four queries: answers per day, ratings per day, step ratings, votes (the
    totals are the days' counts and sums added up)."""
    answers = _answer_sums(version.pk, since, until)
    ratings = _rating_sums(version.pk, since, until)
    return VersionAnalytics(
        version=version.label,
        since=since,
        until=until,
        total=_period(answers, ratings, _step_sums(version.pk, since, until)),
        days=_days(answers, ratings),
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
    """(positive, rated) over the message-level ratings of the version's answers given in the window:
    each user counts at most ``per_user`` times (their newest ratings), so one prolific rater cannot
    decide, and of those at most the ``last`` newest count. Counted in the database."""
    ratings = _ratings(version_id, since, until).filter(SCORED, step__isnull=True)
    if per_user is not None:
        newest_first = [F("created_at").desc(), F("id").desc()]
        ratings = ratings.annotate(nth=Window(RowNumber(), partition_by=[F("user_id")], order_by=newest_first)).filter(
            nth__lte=per_user
        )
    if last is not None:
        kept = ratings.order_by("-created_at", "-id").values("id")[:last]
        ratings = Feedback.objects.filter(id__in=Subquery(kept))
    totals = ratings.aggregate(rated=Count("id"), positive=Count("id", filter=POSITIVE))
    return totals["positive"], totals["rated"]


def vote_counts(
    version_id: int, other_id: int, *, since: datetime | None = None, per_user: int | None = None
) -> tuple[int, int, int]:
    """(won, lost, tied) of ``version_id``'s answers in side-by-side votes against ``other_id``'s,
    each user counted at most ``per_user`` times (their newest votes). Counted in the database."""
    pair = Q(chosen_version_id=version_id, rejected_version_id=other_id) | Q(
        chosen_version_id=other_id, rejected_version_id=version_id
    )
    votes = Comparison.objects.filter(pair)
    if since is not None:
        votes = votes.filter(updated_at__gte=since)
    if per_user is not None:
        newest_first = [F("updated_at").desc(), F("id").desc()]
        votes = votes.annotate(nth=Window(RowNumber(), partition_by=[F("user_id")], order_by=newest_first)).filter(
            nth__lte=per_user
        )
    totals = votes.aggregate(
        won=Count("id", filter=Q(is_tie=False, chosen_version_id=version_id)),
        lost=Count("id", filter=Q(is_tie=False, rejected_version_id=version_id)),
        tied=Count("id", filter=Q(is_tie=True)),
    )
    return totals["won"], totals["lost"], totals["tied"]
