"""Feedback insights: where users are unhappy, for the operator who decides what to train next (the seed's
"Analyze feedback" and "Identify improvement areas").

For a window (and optionally one policy version):
- ``satisfaction``: the positive rate per version per day (Wilson intervals);
- ``tags``: the reason tags by frequency, with their trend (the window's second half against its first);
- ``steps``: the step ✗ rate by step position (do answers go wrong early or late?);
- ``topics``: the prompts of rated answers clustered by topic (TF-IDF and k-means, scikit-learn), each
  cluster with its top terms, size, positive rate and example conversations, unhappiest first;
- ``comments``: the comments left on the worst-rated answers, newest first.

A rating is positive as in ``feedback.analytics`` (thumbs up, or 4-5 stars when only stars were given).
Topics cluster at most ``INSIGHTS_TOPIC_SAMPLE`` of the newest rated answers, so the page stays fast
on millions of rows; everything else is one grouped query each.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Case, Count, IntegerField, Q, QuerySet, When
from django.db.models.functions import TruncDate
from django.utils import timezone

from core.stats import proportion
from feedback.analytics import POSITIVE, SCORED
from feedback.models import Feedback
from models_registry.models import ModelVersion


@dataclass(frozen=True)
class Filters:
    since: datetime
    until: datetime
    version_id: int | None = None

    @classmethod
    def last_days(cls, days: int = 30, version_id: int | None = None) -> Filters:
        now = timezone.now()
        return cls(since=now - timedelta(days=days), until=now, version_id=version_id)

    def as_dict(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "version_id": self.version_id}


def _feedback(filters: Filters) -> QuerySet[Feedback]:
    rows = Feedback.objects.filter(created_at__gte=filters.since, created_at__lt=filters.until)
    if filters.version_id is not None:
        rows = rows.filter(model_version_id=filters.version_id)
    return rows


def satisfaction(filters: Filters) -> list[dict[str, Any]]:
    """Per version and day: ratings, positive ones, and the positive rate with its interval."""
    rows = (
        _feedback(filters)
        .filter(SCORED, step__isnull=True, model_version__isnull=False)
        .annotate(day=TruncDate("created_at"))
        .values("model_version_id", "day")
        .annotate(n=Count("id"), positive=Count("id", filter=POSITIVE))
        .order_by("model_version_id", "day")
    )
    labels = dict(
        (v.pk, v.label) for v in ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY).only("kind", "number")
    )
    return [
        {
            "version": labels.get(row["model_version_id"], str(row["model_version_id"])),
            "day": row["day"].isoformat(),
            "ratings": row["n"],
            "positive": row["positive"],
            **{f"rate_{k}": v for k, v in proportion(row["positive"], row["n"]).as_dict().items() if k != "n"},
        }
        for row in rows
    ]


def tags(filters: Filters) -> list[dict[str, Any]]:
    """Each reason tag: how often it was given, its share of tagged feedback, and its trend (its share in
    the window's second half minus its share in the first)."""
    middle = filters.since + (filters.until - filters.since) / 2
    counts: Counter[str] = Counter()
    halves: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}
    tagged = {False: 0, True: 0}
    rows = _feedback(filters).exclude(tags=[])
    if connection.vendor == "postgresql":  # counted in the database: one pass, no rows to Python
        sql, params = rows.values("id", "tags", "created_at").query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT created_at >= %s, count(*) FROM ({sql}) f GROUP BY 1", [middle, *params])
            tagged.update({bool(late): n for late, n in cursor.fetchall()})
            cursor.execute(
                f"SELECT tag, created_at >= %s, count(DISTINCT id)"
                f" FROM ({sql}) f, jsonb_array_elements_text(f.tags) tag GROUP BY 1, 2",
                [middle, *params],
            )
            for tag, late, n in cursor.fetchall():
                counts[tag] += n
                halves[bool(late)][tag] += n
    else:
        for row_tags, created_at in rows.values_list("tags", "created_at").iterator(chunk_size=5000):
            second_half = created_at >= middle
            tagged[second_half] += 1
            for tag in set(row_tags):
                counts[tag] += 1
                halves[second_half][tag] += 1
    total = tagged[False] + tagged[True]
    result = []
    for tag, n in counts.most_common():
        early = halves[False][tag] / tagged[False] if tagged[False] else 0.0
        late = halves[True][tag] / tagged[True] if tagged[True] else 0.0
        result.append({"tag": tag, "count": n, "share": n / total if total else 0.0, "trend": round(late - early, 4)})
    return result


def steps(filters: Filters) -> list[dict[str, Any]]:
    """The step ✗ rate by step position (1 is the first step)."""
    rows = (
        _feedback(filters)
        .filter(step__isnull=False, thumbs__isnull=False)
        .values("step__index")
        .annotate(n=Count("id"), down=Count("id", filter=Q(thumbs=Feedback.Thumbs.DOWN)))
        .order_by("step__index")
    )
    return [
        {
            "position": row["step__index"] + 1,
            "ratings": row["n"],
            "down": row["down"],
            **{f"rate_{k}": v for k, v in proportion(row["down"], row["n"]).as_dict().items() if k != "n"},
        }
        for row in rows
    ]


def comments(filters: Filters, limit: int = 50) -> list[dict[str, Any]]:
    """Comments on the worst-rated answers: thumbs down or 1-2 stars, newest first."""
    rows = (
        _feedback(filters)
        .filter(Q(thumbs=Feedback.Thumbs.DOWN) | Q(rating__lte=2), step__isnull=True)
        .exclude(comment="")
        .select_related("message__model_version")
        .order_by("-created_at", "-id")[:limit]
    )
    return [
        {
            "feedback_id": f.pk,
            "message_id": str(f.message_id),
            "conversation_id": str(f.message.conversation_id),
            "version": f.message.model_version.label if f.message.model_version else None,
            "thumbs": f.thumbs,
            "rating": f.rating,
            "tags": f.tags,
            "comment": f.comment,
            "at": f.created_at,
        }
        for f in rows
    ]


def topics(filters: Filters, *, clusters: int | None = None, sample: int | None = None) -> list[dict[str, Any]]:
    """The prompts of the newest rated answers clustered by topic, unhappiest cluster first."""
    from sklearn.cluster import KMeans  # scikit-learn is slow to import: only where topics are asked for
    from sklearn.feature_extraction.text import TfidfVectorizer

    clusters = clusters or settings.INSIGHTS_TOPICS
    sample = sample or settings.INSIGHTS_TOPIC_SAMPLE
    rated = list(
        _feedback(filters)
        .filter(SCORED, step__isnull=True, message__parent__isnull=False)
        .annotate(good=Case(When(POSITIVE, then=1), default=0, output_field=IntegerField()))
        .order_by("-created_at", "-id")
        .values_list("message__parent__content", "good", "message__conversation_id")[:sample]
    )
    if len(rated) < clusters * 2:
        return []
    vectorizer = TfidfVectorizer(stop_words="english", max_features=5000, min_df=2)
    try:
        matrix = vectorizer.fit_transform([row[0] for row in rated])
    except ValueError:  # every word is a stop word or occurs once: nothing to cluster on
        return []
    model = KMeans(n_clusters=clusters, n_init=1, random_state=0).fit(matrix)
    terms = model.cluster_centers_.argsort()[:, ::-1]
    vocabulary = vectorizer.get_feature_names_out()
    result = []
    for cluster in range(clusters):
        members = [i for i, label in enumerate(model.labels_) if label == cluster]
        if not members:
            continue
        good = sum(rated[i][1] for i in members)
        unhappy_first = sorted(members, key=lambda i: rated[i][1])
        result.append(
            {
                "topic": cluster,
                "terms": [str(vocabulary[j]) for j in terms[cluster, :6] if model.cluster_centers_[cluster, j] > 0],
                "size": len(members),
                **{f"positive_{k}": v for k, v in proportion(good, len(members)).as_dict().items() if k != "n"},
                "examples": [
                    {"prompt": rated[i][0][:200], "positive": bool(rated[i][1]), "conversation_id": str(rated[i][2])}
                    for i in unhappy_first[:3]
                ],
            }
        )
    return sorted(result, key=lambda topic: (topic["positive_value"], -topic["size"]))


def insights(filters: Filters) -> dict[str, Any]:
    return {
        "filters": filters.as_dict(),
        "satisfaction": satisfaction(filters),
        "tags": tags(filters),
        "steps": steps(filters),
        "topics": topics(filters),
        "comments": comments(filters),
    }


TABLES = {"satisfaction": satisfaction, "tags": tags, "steps": steps, "topics": topics, "comments": comments}
