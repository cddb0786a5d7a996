"""Prometheus collectors of the audit sink and the alerter: their own counters, read when scraped.

Names and label rules: ``baton.processors.metrics``; docs/metrics.md lists every name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["AlertMetrics", "SinkMetrics"]


class SinkMetrics(Collector):
    """The audit sink's counters (``SinkStats``), read when scraped."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:  # not connected yet
            return
        yield CounterMetricFamily(
            "baton_audit_rows", "decisions written to the audit table", value=stats.rows
        )
        yield CounterMetricFamily(
            "baton_audit_rejected", "records written to governance.rejected", value=stats.rejected
        )
        yield CounterMetricFamily(
            "baton_audit_batches", "inserts into the audit table", value=stats.batches
        )
        yield CounterMetricFamily(
            "baton_audit_retries",
            "inserts retried after a ClickHouse failure",
            value=stats.retries,
        )
        yield CounterMetricFamily(
            "baton_audit_oversized_answers",
            "Kafka fetch answers refused past BATON_SINK_MAX_RECEIVE_BYTES: a partition is "
            "stalled behind a larger record batch (nothing after it is audited)",
            value=stats.oversized_answers,
        )
        lag = GaugeMetricFamily(
            "baton_audit_lag",
            "decisions on gov.decisions not yet in the audit, per partition",
            labels=["partition"],
        )
        for partition, n in sorted(dict(stats.lag).items()):
            lag.add_metric([str(partition)], n)
        yield lag
        yield GaugeMetricFamily(
            "baton_audit_failing",
            "1 while the last insert failed (ClickHouse unreachable or refusing), else 0",
            value=1 if stats.last_error else 0,
        )


@dataclass
class _AlertSources:
    stats: Any
    alerter: Any
    sender: Any


class AlertMetrics(Collector):
    """The alerter's counters (``AlertStats``, the storm folder, the webhook sender)."""

    def __init__(self) -> None:
        self._sources: _AlertSources | None = None

    def watch(self, stats: Any, alerter: Any, sender: Any) -> None:
        """Called by ``run_alerts`` once its parts exist (its ``on_ready``)."""
        self._sources = _AlertSources(stats, alerter, sender)

    def collect(self) -> Iterator[Metric]:
        src = self._sources
        if src is None:
            return
        yield CounterMetricFamily(
            "baton_alerts_sent",
            "alert messages announced (one stop, or a storm summary)",
            value=src.stats.announced,
        )
        yield CounterMetricFamily(
            "baton_alerts_folded",
            "stops folded into storm summaries",
            value=getattr(src.stats, "folded", 0),
        )
        yield CounterMetricFamily(
            "baton_alerts_duplicates",
            "stops seen again (redelivered), not announced again",
            value=src.alerter.duplicates,
        )
        skipped = CounterMetricFamily(
            "baton_alerts_skipped",
            "records on gov.stops not announced alone, by kind: unsigned (no key of "
            "decision_keys signed it), late (decided past --max-age: in a late summary), "
            "too_old, not_json, not_a_decision, empty, too_large, unexpected",
            labels=["kind"],
        )
        for kind, n in sorted(getattr(src.stats, "skipped", {}).items()):
            skipped.add_metric([kind], n)
        yield skipped
        sender = src.sender
        yield CounterMetricFamily(
            "baton_alerts_webhook_posted",
            "alerts the webhook accepted",
            value=sender.posted if sender else 0,
        )
        yield CounterMetricFamily(
            "baton_alerts_failed",
            "alerts the webhook did not take: refused after every attempt, or dropped from a "
            "full queue",
            value=(sender.failed + sender.dropped) if sender else 0,
        )
