"""The audit sink: gov.decisions from Kafka into ``governance.decisions`` in batches, at least once.

Guarantees (with ``FINAL`` or the views, the audit is exact):
- nothing read is lost: offsets are committed only after the batch holding them is in
  ClickHouse; a crash (even ``kill -9``) re-reads from the last commit;
- nothing is reordered: per partition, records go in offset order, and a failed insert is
  retried - same rows, same ``insert_deduplication_token`` - before anything newer;
- copies fold: a retried insert that ClickHouse had in fact stored is dropped by its token,
  and every other duplicate (Kafka redelivery, a re-read after a crash) by the
  ReplacingMergeTree on ``decision_id`` at merge time or ``FINAL`` at query time;
- no record can stop it: one that cannot be a row - not a Decision, a number or time its
  column cannot hold, a ``decided_at`` outside the audit's window, a row ClickHouse itself
  refuses (found by splitting the insert in halves until it is alone) - goes to
  ``governance.rejected`` with its bytes, error and ``error_kind``, and the batch goes on.
  Only ClickHouse failing as a server (unreachable, timeouts, a missing table) holds the
  sink, which then retries.

Not guaranteed: plain ``count()`` without ``FINAL`` may count a duplicate until a merge; the
token does not catch a re-read after a crash (the batch boundaries differ then); ``close()``
does not run on ``kill -9`` (nothing is lost, the tail is read again); a server error the
sink does not know as a data error is retried, so a row that triggers one would hold the
sink (every known data error code is in ``clickhouse.ROW_DATA_CODES``).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from baton.schemas.errors import AuditUnavailable, BatonError
from baton.schemas.settings import Settings
from baton.sinks.audit_batch import (
    DECISIONS_TABLE,
    REJECTED_TABLE,
    AuditBatch,
    utc_now,
    write_batch,
)
from baton.sinks.clickhouse import audit_errors, connect, insert_types, parse_dsn
from baton.sinks.rows import DECISION_COLUMNS, REJECTED_COLUMNS, RejectKind
from baton.sinks.schema import migrate

__all__ = [
    "DECISIONS_TABLE",
    "REJECTED_TABLE",
    "AuditBatch",
    "AuditSink",
    "SinkStats",
    "decisions_topic",
    "ensure_catalog_topics",
    "run_sink",
    "stops_topic",
    "write_batch",
]

log = logging.getLogger(__name__)


def ensure_catalog_topics(settings: Settings, stop_event: threading.Event) -> None:
    """Create Baton's topics if missing, retrying while Kafka is unreachable (until stop).

    Subscribing to a missing topic is not harmless: Tansu (and Kafka with auto-creation on)
    creates it with the broker's default partition count, which then disagrees with the
    catalog and splits runs across partitions.
    """
    from baton.schemas.errors import BrokerUnavailable
    from baton.streams.kafka import admin_config
    from baton.streams.topics import ensure_topics

    attempt = 0
    while True:
        try:
            ensure_topics(
                admin_config(settings.kafka_config()),
                _catalog(settings),
                timeout=settings.connect_timeout_s,
            )
            return
        except BrokerUnavailable as exc:
            wait = min(30.0, 1.0 * 2 ** min(attempt, 5))
            attempt += 1
            log.warning("%s; retrying in %.0f s", exc, wait)
            if stop_event.wait(wait):
                raise


def decisions_topic(settings: Settings) -> str:
    """The decisions topic name, with the configured prefix (from the topic catalog)."""
    return _catalog(settings).decisions


def stops_topic(settings: Settings) -> str:
    """The stops topic name, with the configured prefix (from the topic catalog)."""
    return _catalog(settings).stops


def _catalog(settings: Settings) -> Any:
    from baton.streams.topics import TopicCatalog

    return TopicCatalog.from_settings(settings)


@dataclass
class SinkStats:
    """What the sink has done; read it from another thread for status pages."""

    rows: int = 0
    rejected: int = 0
    batches: int = 0
    retries: int = 0
    last_error: str | None = None
    lag: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _window: tuple[float, int] = field(default=(0.0, 0), repr=False)

    def __post_init__(self) -> None:
        self._window = (self.started, 0)

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())

    def rows_per_s(self) -> float:
        """Rows per second since the previous call (the first call: since the start)."""
        now = time.monotonic()
        since, rows = self._window
        self._window = (now, self.rows)
        return (self.rows - rows) / (now - since) if now > since else 0.0

    def describe(self) -> str:
        """One status line: rows, recent rate, rejects, lag per partition, the last error."""
        lag = " ".join(f"p{p}={n}" for p, n in sorted(self.lag.items())) or "-"
        error = f"; last error: {self.last_error}" if self.last_error else ""
        return (
            f"{self.rows} decisions in {self.batches} batches ({self.rows_per_s():.0f}/s), "
            f"{self.rejected} rejected, {self.retries} retries, lag {self.total_lag} ({lag})"
            f"{error}"
        )


class _Stopped(Exception):
    """The stop event was set while a batch waited for ClickHouse: exit without committing."""


class AuditSink:
    """A confluent-kafka consumer loop feeding ``write_batch``; ``run(stop_event)`` blocks.

    The consumer is created in ``run`` (no I/O in the constructor). ``client`` is an open
    clickhouse-connect client whose schema is migrated (``run_sink`` does both).
    """

    #: parse the next batch while the last one is written (False: one after the other; the
    #: bench measures what the overlap is worth)
    pipelined: bool = True

    def __init__(
        self,
        kafka_config: dict[str, str],
        client: Client,
        topic: str,
        *,
        group_id: str,
        batch_size: int = 5000,
        batch_timeout_s: float = 1.0,
        consumer_overrides: dict[str, Any] | None = None,
        label: str = "ClickHouse",
        report_every_s: float = 10.0,
        on_report: Callable[[SinkStats], None] | None = None,
        backoff: Callable[[int], float] | None = None,
        ttl_days: int | None = 365,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.kafka_config = kafka_config
        self.client = client
        self.topic = topic
        self.group_id = group_id
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        self.consumer_overrides = consumer_overrides or {}
        self.label = label
        self.report_every_s = report_every_s
        self.on_report = on_report
        self.backoff = backoff or (lambda attempt: min(30.0, 0.25 * 2 ** min(attempt, 7)))
        self.ttl_days = ttl_days
        self.clock = clock
        self.stats = SinkStats()
        self._batch = self._new_batch()
        self._carry: list[Any] = []  # read while a batch waited for ClickHouse
        #: the batch being written and the writer's future (None: its last attempt failed)
        self._writing: tuple[AuditBatch, Future[None] | None] | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._types: dict[str, tuple[str, ...]] | None = None  # see clickhouse.insert_types
        self._consumer: Any = None
        self._last_report = time.monotonic()

    def _new_batch(self) -> AuditBatch:
        return AuditBatch(self.topic, self.ttl_days, self.clock)

    # -- consumer ------------------------------------------------------------------------
    def _make_consumer(self) -> Any:
        from confluent_kafka import Consumer

        from baton.streams.kafka import consumer_config

        conf = consumer_config(
            self.kafka_config,
            self.group_id,
            {
                "enable.auto.offset.store": False,
                # a backlog fills librdkafka's prefetch queue (64 MB, ~60,000 decisions) and
                # it then waited fetch.queue.backoff.ms (1 s) before fetching again: the sink
                # starved with a backlog in the broker (measured: consume() returned nothing
                # for 0.8 s at a time); check again soon instead
                "fetch.queue.backoff.ms": 20,
                "error_cb": lambda err: log.warning("audit sink: Kafka: %s", err),
                **self.consumer_overrides,
            },
        )
        # offsets are ours to commit, and only after the insert: never auto-commit
        conf["enable.auto.commit"] = False
        return Consumer(conf)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        revoked = {tp.partition for tp in partitions if tp.topic == self.topic}
        self._settle_revoked(consumer, revoked)
        self._batch.drop_partitions(revoked)
        self._carry = [m for m in self._carry if m.partition() not in revoked]
        for p in revoked:
            self.stats.lag.pop(p, None)
        log.info("audit sink: partitions revoked: %s", sorted(revoked))

    def _settle_revoked(self, consumer: Any, revoked: set[int]) -> None:
        """Before partitions go: a batch being written finishes; stored, it is committed (its
        rows are ours); not stored, it forgets the revoked partitions (their new owner reads
        them again) and waits for its retry."""
        if self._writing is None:
            return
        batch, future = self._writing
        if future is not None:
            try:
                future.result()
            except AuditUnavailable as exc:
                self._writing = (batch, None)  # retried by _finish_write
                self.stats.last_error = str(exc)
            else:
                self._writing = None
                self._committed(consumer, batch)
                return
        batch.drop_partitions(revoked)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("audit sink: partitions assigned: %s", sorted(tp.partition for tp in partitions))

    def run(self, stop_event: threading.Event) -> None:
        """Consume, batch, insert, commit until ``stop_event`` is set; the batch in hand is
        flushed on a clean stop (when ClickHouse answers).

        Pipelined: while one batch is written (ClickHouse works without holding the GIL),
        the next one is read and parsed. One write at a time, in offset order: batch N+1 is
        handed to the writer only after batch N is stored and committed.
        """
        from confluent_kafka import KafkaError

        consumer = self._consumer = self._make_consumer()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        try:
            consumer.subscribe(
                [self.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
            while not stop_event.is_set():
                if self._carry:
                    messages, self._carry = self._carry, []
                else:
                    room = max(1, self.batch_size - len(self._batch))
                    messages = consumer.consume(
                        num_messages=min(room, 10_000), timeout=self._wait()
                    )
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            self.stats.last_error = str(err)
                            if err.fatal():
                                raise BatonError(f"audit sink: fatal Kafka error: {err}")
                            log.warning("audit sink: %s", err)
                        continue
                    self._batch.add(msg.partition(), msg.offset(), msg.value())
                if self._writing is not None and self._writing_done():
                    self._finish_write(consumer, stop_event)
                if self._batch and (len(self._batch) >= self.batch_size or self._time_left() <= 0):
                    if self._writing is not None:
                        self._finish_write(consumer, stop_event)
                    self._start_write()
                    if not self.pipelined:
                        self._finish_write(consumer, stop_event)
                self._report(consumer)
            if self._writing is not None:
                self._finish_write(consumer, stop_event)
            if self._batch:
                self._start_write()
                self._finish_write(consumer, stop_event)
        except _Stopped:
            log.info("audit sink: stopped with an unwritten batch; it is read again on restart")
        finally:
            self._writer.shutdown(wait=True)  # a write in flight ends (its rows may be stored)
            self._writing = None
            consumer.close()
            self._consumer = None

    def _wait(self) -> float:
        """How long the next consume may block: until the batch is due, or the write is done."""
        wait = self._time_left() if self._batch else min(self.batch_timeout_s, 0.5)
        return min(wait, 0.005) if self._writing is not None else wait

    def _time_left(self) -> float:
        return max(0.0, self._batch.started + self.batch_timeout_s - time.monotonic())

    def _writing_done(self) -> bool:
        return self._writing is not None and (self._writing[1] is None or self._writing[1].done())

    def _start_write(self) -> None:
        """Hand the batch in hand to the writer thread; a new batch starts filling."""
        batch, self._batch = self._batch, self._new_batch()
        self._writing = (batch, self._writer.submit(self._write, batch))

    def _write(self, batch: AuditBatch) -> None:
        """One attempt at storing ``batch`` (writer thread); AuditUnavailable: try again."""
        with audit_errors(self.label, "reading the audit tables' column types"):
            if self._types is None:
                self._types = {
                    table: insert_types(self.client, table, columns)
                    for table, columns in (
                        (DECISIONS_TABLE, DECISION_COLUMNS),
                        (REJECTED_TABLE, REJECTED_COLUMNS),
                    )
                }
        write_batch(self.client, batch, self.label, self._types)

    def _finish_write(self, consumer: Any, stop_event: threading.Event) -> None:
        """Wait for the batch being written; retry it until stored (consumer paused between
        attempts, still polled so the group keeps us); then commit its offsets."""
        assert self._writing is not None
        batch, future = self._writing
        attempt = 0
        paused: list[Any] = []
        error: AuditUnavailable | None = None
        if future is not None:
            try:
                future.result()
            except AuditUnavailable as exc:
                error = exc
        else:
            error = AuditUnavailable(self.stats.last_error or "the last write failed")
        while error is not None and batch:
            self.stats.retries += 1
            self.stats.last_error = str(error)
            self._types = None  # a failed insert may have met a changed table: ask again
            wait = self.backoff(attempt)
            attempt += 1
            log.warning(
                "audit sink: insert failed (attempt %d), retrying in %.1f s: %s",
                attempt,
                wait,
                error,
            )
            paused = self._wait_paused(consumer, wait, stop_event)
            if self._writing is None:  # stored and committed by a revoke during the wait
                break
            try:
                self._write(batch)
                error = None
            except AuditUnavailable as exc:
                error = exc
        if paused:
            # what is assigned now: a rebalance during the wait may have changed it
            consumer.resume(consumer.assignment())
        if self._writing is None:
            return
        self._writing = None
        self.stats.last_error = None  # recovered: report the present, not history
        if batch:  # else every partition of it was revoked meanwhile
            self._committed(consumer, batch)

    def _committed(self, consumer: Any, batch: AuditBatch) -> None:
        """Commit the offsets of a stored ``batch`` and count it."""
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [TopicPartition(self.topic, p, o) for p, o in batch.commit_offsets().items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # e.g. a rebalance took the partitions meanwhile: the new owner re-reads the batch,
            # whose rows ReplacingMergeTree folds; nothing is lost
            log.warning("audit sink: commit after insert failed (rows are stored): %s", exc)
        stored = len(batch.rows) - sum(
            1 for r in batch.rejected if r[-1] == RejectKind.REFUSED_BY_CLICKHOUSE
        )
        self.stats.rows += stored
        self.stats.rejected += len(batch.rejected)
        self.stats.batches += 1
        if batch.rejected:
            kinds = Counter(r[-1] for r in batch.rejected)
            log.warning(
                "audit sink: %d of %d records rejected into %s (%s); first: %s/%s/%s %s",
                len(batch.rejected),
                stored + len(batch.rejected),
                REJECTED_TABLE,
                ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())),
                *batch.rejected[0][:3],
                batch.rejected[0][3][:300],
            )
        for p, next_offset in batch.commit_offsets().items():
            self.stats.lag[p] = self._lag(consumer, p, next_offset)

    def _wait_paused(self, consumer: Any, wait: float, stop_event: threading.Event) -> list[Any]:
        """Sleep ``wait`` s with every partition paused, still polling so the group keeps us."""
        deadline = time.monotonic() + wait
        paused: list[Any] = []
        while True:
            if stop_event.is_set():
                raise _Stopped
            assignment = consumer.assignment()
            if assignment:
                consumer.pause(assignment)
                paused = assignment
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return paused
            # paused partitions deliver nothing; a partition assigned meanwhile may: keep it
            self._carry.extend(consumer.consume(num_messages=1000, timeout=min(0.2, remaining)))

    def _lag(self, consumer: Any, partition: int, next_offset: int) -> int:
        from confluent_kafka import TopicPartition

        try:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), cached=True
            )
        except Exception:  # lag is a report, never a reason to stop
            return self.stats.lag.get(partition, 0)
        return max(0, int(high) - next_offset) if high >= 0 else 0

    def _report(self, consumer: Any) -> None:
        now = time.monotonic()
        if now - self._last_report < self.report_every_s:
            return
        self._last_report = now
        if self.on_report is not None:
            self.on_report(self.stats)
        else:
            log.info("audit sink: %s", self.stats.describe())


def open_audit(
    dsn: str,
    ttl_days: int,
    stop_event: threading.Event | None = None,
    backoff: Callable[[int], float] | None = None,
    *,
    ca_cert: str | Path | None = None,
    verify: bool = True,
) -> Client:
    """Connect to ``dsn`` and migrate, retrying while ClickHouse is unreachable (until stop)."""
    backoff = backoff or (lambda attempt: min(30.0, 0.5 * 2 ** min(attempt, 6)))
    label = parse_dsn(dsn).label
    attempt = 0
    while True:
        try:
            # the sink must own a chDB directory, never follow another process's endpoint
            client = connect(
                dsn, follow_endpoint=False, create=True, ca_cert=ca_cert, verify=verify
            )
            with audit_errors(label, "migrating the audit schema"):
                migrate(client, ttl_days)
            return client
        except AuditUnavailable as exc:
            if stop_event is None or parse_dsn(dsn).kind == "chdb":
                raise
            wait = backoff(attempt)
            attempt += 1
            log.warning("audit sink: %s; retrying in %.1f s", exc, wait)
            if stop_event.wait(wait):
                raise


def run_sink(
    settings: Settings,
    stop_event: threading.Event,
    *,
    sql_host: str = "127.0.0.1",
    sql_port: int | None = 8123,
    topic: str | None = None,
    group_id: str | None = None,
    consumer_overrides: dict[str, Any] | None = None,
    on_ready: Callable[[AuditSink, Any], None] | None = None,
    on_report: Callable[[SinkStats], None] | None = None,
    report_every_s: float = 10.0,
) -> SinkStats:
    """Run the audit sink until ``stop_event`` is set; returns its stats.

    Connects to ``settings.clickhouse_dsn`` (retrying while a server is down), migrates the
    schema, and with a chDB DSN serves SQL on ``sql_host:sql_port`` (None: do not serve; 0:
    any free port) for the processes that cannot open the directory. ``on_ready(sink,
    sql_server_or_None)`` is called once everything is up (``baton up`` prints the URL);
    ``on_report(stats)`` every ``report_every_s`` (default: an INFO log line with the lag).
    """
    label = parse_dsn(settings.clickhouse_dsn).label
    # a batch is thousands of young containers (parsed records, rows, clickhouse-connect's
    # columns): at CPython's default gen-0 threshold (700) the collector ran ~50 times per
    # 10,000 rows, ~5 us a row, an eighth of the sink's time (measured: bench/RESULTS.md)
    gc.set_threshold(50_000, 20, 100)
    if topic is None:
        ensure_catalog_topics(settings, stop_event)
    client = open_audit(
        settings.clickhouse_dsn,
        settings.audit_ttl_days,
        stop_event,
        ca_cert=settings.clickhouse_ca,
        verify=settings.clickhouse_verify,
    )
    server = None
    try:
        if parse_dsn(settings.clickhouse_dsn).kind == "chdb" and sql_port is not None:
            from baton.sinks.sqlserver import serve_sql

            server = serve_sql(client, sql_host, sql_port)
        overrides: dict[str, Any] = {}
        session_timeout_s = getattr(settings, "session_timeout_s", None)
        if session_timeout_s:
            overrides["session.timeout.ms"] = int(session_timeout_s * 1000)
        overrides.update(consumer_overrides or {})
        sink = AuditSink(
            settings.kafka_config(),
            client,
            topic or decisions_topic(settings),
            group_id=group_id or f"{settings.app_id}-audit",
            batch_size=settings.sink_batch_size,
            batch_timeout_s=settings.sink_batch_timeout_s,
            consumer_overrides=overrides,
            label=label,
            report_every_s=report_every_s,
            on_report=on_report,
            ttl_days=settings.audit_ttl_days,
        )
        if on_ready is not None:
            on_ready(sink, server)
        sink.run(stop_event)
        return sink.stats
    finally:
        if server is not None:
            server.close()
        client.close()
