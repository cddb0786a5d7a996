"""The audit sink's loop: records read into batches, one batch written at a time, then committed.

The guarantees it keeps (nothing lost, order per partition, the same token on a retry, poison
records to governance.rejected) are stated in ``baton.sinks.sink``, which starts it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from baton.schemas.errors import AuditUnavailable, BatonError
from baton.sinks.audit_batch import (
    DECISIONS_TABLE,
    REJECTED_TABLE,
    AuditBatch,
    utc_now,
    write_batch,
)
from baton.sinks.audit_insert import insert_types
from baton.sinks.clickhouse import audit_errors
from baton.sinks.rows import DECISION_COLUMNS, REJECTED_COLUMNS, RejectKind, oversized
from baton.sinks.sink_end import DrainEnd, partition_lag
from baton.sinks.sink_parse import ParseProcesses
from baton.sinks.sink_start import DEFAULT_MAX_RECEIVE_BYTES, audit_consumer
from baton.sinks.sink_stats import SinkStats

__all__ = ["AuditSink"]

log = logging.getLogger("baton.sinks.sink")


#: a consume that returns nothing within this long finds the partitions read to their end
#: (librdkafka prefetches: a backlog answers at once)
_DRAIN_WAIT_S = 0.02
#: records a consume may return while eager (see AuditSink._room)
_EAGER_STEP = 1_000


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
    #: the writer free, hand it what is parsed once that is a quarter of a batch, rather than
    #: wait for a full one (False: full batches or the timeout only; see ``_due``)
    eager: bool = True

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
        parse_processes: int = 0,
        max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
        mac_keys: tuple[bytes, ...] = (),
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
        #: processes that parse and encode the records (0: this process does; see sink_parse)
        self.parse_processes = parse_processes
        self.max_receive_bytes = max_receive_bytes  # receive.message.max.bytes (sink_start)
        self.mac_keys = mac_keys  # the workers' audit MAC keys (rows.forged); (): none checked
        self._parsers: ParseProcesses | None = None
        self.stats = SinkStats()
        self._batch = self._new_batch()
        self._carry: list[Any] = []  # read while a batch waited for ClickHouse
        #: the batch being written and the writer's future (None: its last attempt failed)
        self._writing: tuple[AuditBatch, Future[None] | None] | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._types: dict[str, tuple[str, ...]] | None = None  # see audit_insert.insert_types
        self._consumer: Any = None
        self._last_report = time.monotonic()
        #: the last consume returned nothing: the partitions are read to their end
        self._drained = False

    def _new_batch(self) -> AuditBatch:
        return AuditBatch(self.topic, self.ttl_days, self.clock, mac_keys=self.mac_keys)

    # -- consumer ------------------------------------------------------------------------
    def _make_consumer(self) -> Any:
        overrides = {"error_cb": self.stats.kafka_error, **self.consumer_overrides}
        return audit_consumer(self.kafka_config, self.group_id, overrides, self.max_receive_bytes)

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

    def run(self, stop_event: threading.Event, drain: threading.Event | None = None) -> None:
        """Consume, batch, insert, commit until ``stop_event`` is set, or once ``drain`` is
        set and the partitions are read to their end (``sink_end.DrainEnd``); the batch in
        hand is flushed on a clean stop (when ClickHouse answers).

        Pipelined: while one batch is written (ClickHouse works without holding the GIL),
        the next one is read and parsed. One write at a time, in offset order: batch N+1 is
        handed to the writer only after batch N is stored and committed.
        """
        from confluent_kafka import KafkaError

        consumer = self._consumer = self._make_consumer()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        with contextlib.suppress(AuditUnavailable):  # else the first write asks again
            self._load_types()  # before any record: two queries the first batch need not wait for
        self._start_parsers()
        try:
            consumer.subscribe(
                [self.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
            end = DrainEnd(self.topic, drain) if drain is not None else None
            while not stop_event.is_set() and not (
                end is not None and end.reached(consumer, self._drained and not self._carry)
            ):
                if self._carry:
                    messages, self._carry = self._carry, []
                else:
                    messages = consumer.consume(num_messages=self._room(), timeout=self._wait())
                    self._drained = not messages
                records = []
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            self.stats.last_error = str(err)
                            if err.fatal():
                                raise BatonError(f"audit sink: fatal Kafka error: {err}")
                            log.warning("audit sink: %s", err)
                        continue
                    records.append((msg.partition(), msg.offset(), msg.value()))
                self._take(records)
                if self._writing is not None and self._writing_done():
                    self._finish_write(consumer, stop_event)
                if self._batch and self._due():
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
            if self._parsers is not None:
                self._parsers.close()
                self._parsers = None

    def _start_parsers(self) -> None:
        """Launch the parse processes (they import while the group assigns partitions); one
        that cannot start leaves the parsing to this process, with a warning."""
        if self.parse_processes <= 0:
            return
        parsers = ParseProcesses(self.parse_processes, self.topic)
        try:
            parsers.start()
        except OSError as exc:
            log.warning("audit sink: cannot start a parse process (%s); parsing here", exc)
            parsers.close()
            return
        self._parsers = parsers

    def _parsing_elsewhere(self) -> bool:
        return self._parsers is not None and self._parsers.alive and self._types is not None

    def _take(self, records: list[tuple[int, int, bytes | None]]) -> None:
        """Records read into the batch: one chunk for a parse process, or parsed here (with one
        past rows.MAX_RECORD_BYTES: a parse process got a copy of it whole, ~2x its size)."""
        if records and self._parsing_elsewhere() and not any(oversized(v) for _, _, v in records):
            self._batch.defer_chunk(records)
        else:
            for partition, offset, value in records:
                self._batch.add(partition, offset, value)
        self._send_chunk()

    def _send_chunk(self) -> None:
        """The records kept since the last call to a parse process, as one chunk (parsed here
        when the parse processes or the column types are gone meanwhile)."""
        if not self._batch.unsent:
            return
        if self._parsing_elsewhere():
            assert self._parsers is not None and self._types is not None
            self._batch.send(self._parsers, self._types[DECISIONS_TABLE])
        else:
            self._batch.materialize()

    def helper_pids(self) -> list[int]:
        """The parse processes' ids (benches add their CPU to the sink's)."""
        return self._parsers.pids() if self._parsers is not None else []

    def _due(self) -> bool:
        """Whether to write the batch in hand now: it is full, or its time is up, or (eager)
        the writer is free and the batch is worth an insert of its own.

        Why eager: with full batches only, the writer idled while the first batch was parsed
        and the parser idled while the last one was written - at 20,000 a batch that was half
        of a 60,000-row backlog's time. A quarter batch keeps inserts big enough for
        ClickHouse (a part per insert and view) while the writer is never idle with rows
        waiting; while it writes, the next batch grows to what was parsed meanwhile.

        Drained: at the end of a backlog the last rows (fewer than a quarter batch) waited
        for the batch's timeout (0.5-0.6 s of a 60,000-row backlog's 3-4 s, measured); when
        the partitions are read to their end they go at once, if they are at least a
        twentieth of a batch (ClickHouse wants inserts of 1,000 rows or more: a trickle still
        waits for the timeout, one insert a second).
        """
        if len(self._batch) >= self.batch_size or self._time_left() <= 0:
            return True
        if not self.eager or self._writing is not None:
            return False
        rows = len(self._batch)
        return rows >= self._eager_rows() or (self._drained and rows >= self._drained_rows())

    def _eager_rows(self) -> int:
        return max(1, self.batch_size // 4)

    def _drained_rows(self) -> int:
        return max(1, self.batch_size // 20)

    def _room(self) -> int:
        """How many records the next consume may return: the batch's room, in steps small
        enough that a writer done with its batch soon gets the next one (eager: 1,000 records;
        the loop looks at the writer between steps, and with a quarter batch a step the
        writer idled 0.1-0.13 s between batches while a step was parsed, measured)."""
        room = max(1, self.batch_size - len(self._batch))
        return min(room, _EAGER_STEP if self.eager else 10_000)

    def _wait(self) -> float:
        """How long the next consume may block: until the batch is due, or the write is done,
        or (eager, the writer free, enough rows to go once drained) long enough to tell that
        the partitions are drained."""
        wait = self._time_left() if self._batch else min(self.batch_timeout_s, 0.5)
        if self._writing is not None:
            return min(wait, 0.005)
        if self.eager and len(self._batch) >= self._drained_rows():
            return min(wait, _DRAIN_WAIT_S)
        return wait

    def _time_left(self) -> float:
        return max(0.0, self._batch.started + self.batch_timeout_s - time.monotonic())

    def _writing_done(self) -> bool:
        return self._writing is not None and (self._writing[1] is None or self._writing[1].done())

    def _start_write(self) -> None:
        """Hand the batch in hand to the writer thread; a new batch starts filling."""
        self._send_chunk()
        batch, self._batch = self._batch, self._new_batch()
        self._writing = (batch, self._writer.submit(self._write, batch))

    def _write(self, batch: AuditBatch) -> None:
        """One attempt at storing ``batch`` (writer thread); AuditUnavailable: try again."""
        self._load_types()
        write_batch(self.client, batch, self.label, self._types)

    def _load_types(self) -> None:
        """The audit tables' column types to insert with, when not known yet (see
        ``audit_insert.insert_types``); AuditUnavailable when ClickHouse does not answer."""
        with audit_errors(self.label, "reading the audit tables' column types"):
            if self._types is None:
                self._types = {
                    table: insert_types(self.client, table, columns)
                    for table, columns in (
                        (DECISIONS_TABLE, DECISION_COLUMNS),
                        (REJECTED_TABLE, REJECTED_COLUMNS),
                    )
                }

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
        stored = batch.stored_rows() - sum(
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
            last = self.stats.lag.get(p, 0)
            self.stats.lag[p] = partition_lag(consumer, self.topic, p, next_offset, last)

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

    def _report(self, consumer: Any) -> None:
        now = time.monotonic()
        if now - self._last_report < self.report_every_s:
            return
        self._last_report = now
        if self.on_report is not None:
            self.on_report(self.stats)
        else:
            log.info("audit sink: %s", self.stats.describe())
