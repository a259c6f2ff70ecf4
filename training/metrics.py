"""Prometheus metrics of training runs and monitor decisions, read from the database when /metrics is
scraped.

Runs and monitor passes execute in worker processes (other machines, in production) that nobody
scrapes; their rows are the truth, so the web process reports them at scrape time: one grouped count
and one query for the running runs; one grouped count and the latest decision per kind for the
monitor. ``rlhf_site``'s /metrics view exports ``DATABASE_REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db import DatabaseError
from django.db.models import Count
from django.db.models.functions import Now
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from training.models import MonitorDecision, TrainingRun


class TrainingRunsCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        runs = GaugeMetricFamily("rlhf_training_runs", "Training runs by kind and status.", labels=["kind", "status"])
        progress = GaugeMetricFamily(
            "rlhf_training_run_progress", "Progress (0 to 1) of each running training run.", labels=["run", "kind"]
        )
        heartbeat_age = GaugeMetricFamily(
            "rlhf_training_run_heartbeat_age_seconds",
            "Seconds since each running training run last reported (the reaper fails it past"
            " TRAINING_STALE_AFTER_SECONDS).",
            labels=["run", "kind"],
        )
        try:
            counts = list(TrainingRun.objects.order_by().values_list("kind", "status").annotate(n=Count("id")))
            running = list(  # the age on the database's clock, which stamps the heartbeats (core.dbclock)
                TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING)
                .annotate(db_now=Now())
                .values_list("id", "kind", "progress", "heartbeat_at", "db_now")
            )
        except DatabaseError:
            return  # the database is down: /metrics still answers with everything else
        for kind, status, n in counts:
            runs.add_metric([kind, status], n)
        for run_id, kind, fraction, heartbeat_at, db_now in running:
            progress.add_metric([str(run_id), kind], fraction)
            if heartbeat_at is not None:
                heartbeat_age.add_metric([str(run_id), kind], (db_now - heartbeat_at).total_seconds())
        yield runs
        yield progress
        yield heartbeat_age

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no query at registration time


class MonitorCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        totals = GaugeMetricFamily(
            "rlhf_monitor_decisions", "Monitor decisions stored, by kind and decision.", labels=["kind", "decision"]
        )
        latest = GaugeMetricFamily(
            "rlhf_monitor_latest_decision",
            "1 for each kind's latest monitor decision (labels: the version, its baseline, the decision).",
            labels=["kind", "version", "baseline", "decision"],
        )
        difference = GaugeMetricFamily(
            "rlhf_monitor_positive_rate_difference",
            "Positive rate of the watched version minus its baseline's, at the latest decision, with the"
            " always-valid interval's bounds.",
            labels=["kind", "version", "bound"],
        )
        try:
            counts = list(MonitorDecision.objects.order_by().values_list("kind", "decision").annotate(n=Count("id")))
            last = [
                decision
                for kind in MonitorDecision.objects.order_by().values_list("kind", flat=True).distinct()
                if (decision := MonitorDecision.objects.filter(kind=kind).select_related("version", "baseline").first())
            ]
        except DatabaseError:
            return
        for kind, decision, n in counts:
            totals.add_metric([kind, decision], n)
        for decision in last:
            latest.add_metric([decision.kind, decision.version.label, decision.baseline.label, decision.decision], 1)
            sequence = decision.figures.get("difference") or {}
            for bound, key in (("estimate", "estimate"), ("low", "low"), ("high", "high")):
                if isinstance(sequence.get(key), int | float):
                    difference.add_metric([decision.kind, decision.version.label, bound], sequence[key])
        yield totals
        yield latest
        yield difference

    def describe(self) -> Iterator[Metric]:
        return iter(())


# Its own registry, exported by /metrics beside the process's metrics: collecting it queries the
# database, which code that reads the default registry in-process (tests in an event loop, the
# multiprocess collector) must not trigger.
DATABASE_REGISTRY = CollectorRegistry(auto_describe=False)
DATABASE_REGISTRY.register(TrainingRunsCollector())
DATABASE_REGISTRY.register(MonitorCollector())
