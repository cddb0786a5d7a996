"""Prometheus metrics of a worker: one call per batch, families built only when scraped.

Every name has the ``baton_`` prefix (docs/metrics.md lists them). The worker's hot path
pays one call per batch (:meth:`WorkerMetrics.batch`): counts are plain integers under one
lock per batch, turned into Prometheus families only when scraped, so a scrape never
slows a batch and a batch never takes prometheus-client's per-sample locks. The sink and
the alerter keep their own counters (``SinkStats``, ``AlertStats``); their collectors
(``metrics_audit``) read those when scraped; ``metrics_serve`` serves them all.

Labels are bounded sets only (outcome, reason, dead-letter kind, topic, partition): never a
run id, tenant or agent name, which a client chooses and could make endless.

Not guaranteed: counters start at zero with each process (Prometheus' ``rate()`` handles
restarts); a redelivered event's cached decision is published, and counted, again; the
decision latency is measured from the record's Kafka timestamp, which the producer's clock
sets, so a skewed producer skews it (each value is clamped to 0 .. 1 h).
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from baton.processors.state_gate import NotTaken

__all__ = ["BATCH_BUCKETS", "LATENCY_BUCKETS", "LATENCY_CAP_S", "WorkerMetrics"]

if TYPE_CHECKING:
    from baton.processors.capacity import Capacity

log = logging.getLogger(__name__)

#: seconds from producing an event to its decision published (the SDK waits up to 10 s)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: events per worker batch (at most batch_size, 10,000 by default)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
#: a latency past this (a client clock far behind) counts as this, so one skewed client
#: cannot make the latency sum, and every average over it, meaningless
LATENCY_CAP_S = 3600.0


class _Histogram:
    """Bucket counts as plain integers; a Prometheus family only when scraped."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


class WorkerMetrics(Collector):
    """What one governance worker did: events, decisions, dead letters, batches, lag, state."""

    def __init__(self, worker_id: str, capacity: Capacity | None = None) -> None:
        self.worker_id = worker_id
        #: the worker's caps: logged as they fill (``processors/capacity.py``), served
        self.capacity = capacity
        self._lock = threading.Lock()
        self._events: dict[str, int] = {}
        self._decisions: dict[tuple[str, str], int] = {}
        self._dead_letters: dict[str, int] = {}
        self._forwarded = 0
        self._redelivered = 0
        self._changelog_bytes = 0
        self._changelog_records = 0
        self._batch_size = _Histogram(BATCH_BUCKETS)
        self._batch_seconds = _Histogram(LATENCY_BUCKETS)
        self._latency = _Histogram(LATENCY_BUCKETS)
        self._lag: dict[tuple[str, int], int] = {}
        self._runs = 0
        self._state_bytes = 0
        self._policy = ""

    # ------------------------------------------------------------------ hooks
    def batch(self, records: Iterable[Any], out: Any, seconds: float) -> None:
        """Count one decided and published batch: its ``InputRecord``s and ``Outputs``.

        Never raises: a metric is a report, and the caller's batch is already published."""
        try:
            with self._lock:
                self._count_batch(records, out, seconds)
        except Exception:  # a bug here must not end a worker whose outputs are out
            log.exception("metrics: could not count a batch")

    def _count_batch(self, records: Iterable[Any], out: Any, seconds: float) -> None:
        events = self._events
        latency = self._latency
        bounds, counts = latency.bounds, latency.counts
        now = time.time()  # the batch is decided and published: its records' latency ends
        n, total = 0, 0.0
        for rec in records:
            events[rec.topic] = events.get(rec.topic, 0) + 1
            n += 1
            stamped = rec.timestamp
            if stamped is not None:
                took = now - stamped
                took = 0.0 if took < 0.0 else LATENCY_CAP_S if took > LATENCY_CAP_S else took
                counts[bisect_left(bounds, took)] += 1
                total += took
        latency.sum += total
        self._batch_size.observe(n)
        self._batch_seconds.observe(seconds)
        self._count_decisions(d for _partition, d in out.decisions)
        self._count_dead_letters(out.dead_letters)
        self._forwarded += len(out.forwards)
        self._count_changelog(out)

    def _count_decisions(self, decided: Iterable[Any]) -> None:
        decisions = self._decisions
        for d in decided:
            key = (d.outcome, d.reason)
            decisions[key] = decisions.get(key, 0) + 1

    def _count_dead_letters(self, letters: Iterable[Any]) -> None:
        for letter in letters:
            kind = getattr(letter, "kind", "") or "unknown"
            self._dead_letters[kind] = self._dead_letters.get(kind, 0) + 1

    def swept(self, out: Any) -> None:
        """Count what a sweep published: expiries (decisions) and run states written."""
        with self._lock:
            self._count_decisions(d for _partition, d in out.decisions)
            self._count_changelog(out)

    def queued(self, record: Any) -> None:
        """Count a record queued for the next publish: a control decision or dead letter
        (kill switches, policy updates, the policy in force)."""
        with self._lock:
            if hasattr(record, "outcome"):
                self._count_decisions((record,))
            else:
                self._count_dead_letters((record,))

    def _count_changelog(self, out: Any) -> None:
        self._changelog_records += len(out.changed)
        self._changelog_bytes += sum(map(len, out.encoded.values()))

    def set_state(
        self,
        lag: dict[tuple[str, int], int],
        runs: int,
        state_bytes: int,
        policy: str,
        redelivered: int = 0,
    ) -> None:
        """The worker's gauges, refreshed every second from the event loop, and the batch
        step's count of records read again and answered with nothing (it keeps the count)."""
        with self._lock:
            self._lag = dict(lag)
            self._runs, self._state_bytes, self._policy = runs, state_bytes, policy
            self._redelivered = redelivered
        if self.capacity is not None:
            try:
                self.capacity.check(runs, state_bytes, time.monotonic())
            except Exception:  # a report: never the end of a worker
                log.exception("checking the worker's capacity failed")

    # ------------------------------------------------------------------ scrape
    def collect(self) -> Iterator[Metric]:
        with self._lock:  # built at once: the lock is never held across the server's writes
            families = list(self._families())
        yield from families

    def _families(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "baton_events", "run events and approvals read by the worker", labels=["topic"]
        )
        for topic, n in sorted(self._events.items()):
            events.add_metric([topic], n)
        yield events
        decisions = CounterMetricFamily(
            "baton_decisions",
            "decisions published (every phase), by outcome and reason",
            labels=["outcome", "reason"],
        )
        for (outcome, reason), n in sorted(self._decisions.items()):
            decisions.add_metric([str(outcome), str(reason)], n)
        yield decisions
        dead = CounterMetricFamily(
            "baton_dead_letters", "records sent to the dead-letter topic", labels=["kind"]
        )
        for kind, n in sorted(self._dead_letters.items()):
            dead.add_metric([str(kind)], n)
        yield dead
        yield CounterMetricFamily(
            "baton_forwarded",
            "events moved to their run's partition (a producer with another partitioner)",
            value=self._forwarded,
        )
        yield CounterMetricFamily(
            "baton_redelivered",
            "records at or below a position their run had read (read again: a worker died "
            "before committing them), their answer out already: answered with nothing",
            value=self._redelivered,
        )
        yield CounterMetricFamily(
            "baton_restore_records_not_taken",
            "runs changelog records a restore did not take: not the workers' own newest "
            "(forged, older, another run's, off their partition, an early deletion)",
            value=NotTaken.total,
        )
        yield CounterMetricFamily(
            "baton_changelog_bytes",
            "bytes of run state written to the runs changelog",
            value=self._changelog_bytes,
        )
        yield CounterMetricFamily(
            "baton_changelog_records",
            "run-state records (and deletions) written to the runs changelog",
            value=self._changelog_records,
        )
        yield self._batch_size.family("baton_batch_size", "events per worker batch")
        yield self._batch_seconds.family(
            "baton_batch_duration_seconds", "deciding and publishing one batch, seconds"
        )
        yield self._latency.family(
            "baton_decision_latency_seconds",
            "from an event's Kafka timestamp (its producer's clock) to its batch's decisions "
            "being published, seconds",
        )
        lag = GaugeMetricFamily(
            "baton_consumer_lag",
            "records in the partition not yet decided by this worker",
            labels=["topic", "partition"],
        )
        for (topic, partition), n in sorted(self._lag.items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        yield GaugeMetricFamily(
            "baton_runs_in_memory", "runs and tombstones this worker holds", value=self._runs
        )
        yield GaugeMetricFamily(
            "baton_run_state_bytes",
            "encoded bytes of the runs this worker holds",
            value=self._state_bytes,
        )
        if self.capacity is not None:
            yield GaugeMetricFamily(
                "baton_max_runs",
                "runs and tombstones this worker may hold (BATON_MAX_RUNS); past it new runs "
                "are stopped worker_run_limit",
                value=self.capacity.max_runs,
            )
            yield GaugeMetricFamily(
                "baton_max_state_bytes",
                "encoded run state this worker may hold (BATON_MAX_STATE_BYTES)",
                value=self.capacity.max_state_bytes,
            )
        info = GaugeMetricFamily(
            "baton_worker_info", "this worker and the policy in force", labels=["worker", "policy"]
        )
        info.add_metric([self.worker_id, self._policy], 1)
        yield info
