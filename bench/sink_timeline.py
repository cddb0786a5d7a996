"""Where the audit sink's wall time goes: a per-thread timeline of one ``run_sink`` over a backlog.

Same records and setup as ``bench.sink_bench`` (the worker's own decisions on an 8-partition
topic of an embedded broker, chDB with every view); the real sink runs once in this process
with its stages timed on one monotonic clock (bench only: module attributes are patched):

* the main thread's reading steps: each ``consume()`` call, and the parse and loop work
  between two calls;
* each write on the writer thread, split into chDB running the INSERT (GIL released), the
  wait for the parse process's chunks (``sink_parse``), and the Python around it (the dedup
  token; clickhouse-connect building the Native block when this process parses);
* the garbage collector's passes, on whichever thread.

Prints one line per write (rows, when it started and ended, its chDB and Python parts, how
long the writer had been idle before it) and the run's totals: assignment to first record,
first record to first write, the writer's idle time between writes, last write to its commit.

    python -m bench.sink_timeline                         # 60,000 decisions, batches of 20,000
    python -m bench.sink_timeline --decisions 200000 --batch-size 20000
    BATON_SINK_PARSE_PROCESSES=0 python -m bench.sink_timeline   # parsed in the sink's process
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from baton.schemas.settings import Settings
from baton.streams.embedded import EmbeddedBroker
from baton.streams.topics import TopicCatalog, ensure_topics
from bench.sink_bench import PARTITIONS, _machine, sink_rate, worker_decisions

#: (thread name, stage, start, end, records) on time.perf_counter
Span = tuple[str, str, float, float, int]


@contextlib.contextmanager
def timed_sink(spans: list[Span]) -> Iterator[None]:
    """Record the sink's stages into ``spans`` while the block runs."""
    from clickhouse_connect.driver._backend import chdb_backend

    import baton.sinks.sink_loop as sink_loop

    def note(stage: str, start: float, records: int = 0) -> None:
        spans.append((threading.current_thread().name, stage, start, time.perf_counter(), records))

    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, attr: str, wrap: Any) -> None:
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, wrap(getattr(obj, attr)))

    def write_batch(original: Any) -> Any:
        def timed(client: Any, batch: Any, *args: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(client, batch, *args)
            finally:
                note("write", start, batch.stored_rows())

        return timed

    def send(original: Any) -> Any:
        def timed(self: Any, *args: Any) -> Any:
            chunks = len(self.chunks)
            original(self, *args)
            self.chunks[chunks:] = [_TimedResult(f, note) for f in self.chunks[chunks:]]

        return timed

    def chdb_run(original: Any) -> Any:
        def timed(self: Any, sql: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(self, sql, *args, **kwargs)
            finally:
                note("chdb insert" if "INFILE" in str(sql)[:2000] else "chdb query", start)

        return timed

    def consumer(original: Any) -> Any:
        return lambda *args: _TimedConsumer(original(*args), note)

    def on_assign(original: Any) -> Any:
        def timed(self: Any, *args: Any) -> Any:
            spans.append(("main", "assigned", time.perf_counter(), time.perf_counter(), 0))
            return original(self, *args)

        return timed

    def committed(original: Any) -> Any:
        def timed(self: Any, consumer_: Any, batch: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(self, consumer_, batch)
            finally:
                note("commit", start, batch.stored_rows())

        return timed

    collecting: dict[int, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collecting[threading.get_ident()] = time.perf_counter()
        elif threading.get_ident() in collecting:
            note(f"gc gen {info['generation']}", collecting.pop(threading.get_ident()))

    patch(sink_loop, "write_batch", write_batch)
    patch(sink_loop.AuditBatch, "send", send)
    patch(chdb_backend.ChdbBackend, "_run", chdb_run)
    patch(sink_loop, "audit_consumer", consumer)
    patch(sink_loop.AuditSink, "_on_assign", on_assign)
    patch(sink_loop.AuditSink, "_committed", committed)
    gc.callbacks.append(on_gc)
    try:
        yield
    finally:
        gc.callbacks.remove(on_gc)
        for obj, attr, original in reversed(saved):
            setattr(obj, attr, original)


class _TimedResult:
    """A parse process's future whose ``result()`` waits are noted (the writer waiting)."""

    def __init__(self, future: Any, note: Any) -> None:
        self._future, self._note = future, note

    def result(self, timeout: float | None = None) -> Any:
        start = time.perf_counter()
        try:
            return self._future.result(timeout)
        finally:
            self._note("parse wait", start)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._future, name)


class _TimedConsumer:
    """A consumer whose ``consume`` calls are noted (returned records, time blocked)."""

    def __init__(self, consumer: Any, note: Any) -> None:
        self._consumer, self._note = consumer, note

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        start = time.perf_counter()
        got = self._consumer.consume(num_messages=num_messages, timeout=timeout)
        self._note("consume", start, len(got))
        return got  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def report(spans: list[Span]) -> None:
    """The per-write lines and the run's totals, in ms from the partitions' assignment."""
    assigned = min(s[2] for s in spans if s[1] == "assigned")
    spans = sorted((s for s in spans if s[3] >= assigned), key=lambda s: s[2])
    ms = lambda t: (t - assigned) * 1e3  # noqa: E731
    reads = [s for s in spans if s[1] == "consume"]
    writes = [s for s in spans if s[1] == "write"]
    inserts = [s for s in spans if s[1] == "chdb insert"]
    first_record = next(s[3] for s in reads if s[4])
    waits = [s for s in spans if s[1] == "parse wait"]
    print(
        "| write | rows | start ms | end ms | chDB ms | waiting for parse ms | Python ms "
        "| writer idle before, ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    idle, previous_end = 0.0, first_record
    for i, (_, _, start, end, rows) in enumerate(writes, 1):
        chdb = sum(e - s for _, _, s, e, _ in inserts if start <= s and e <= end)
        wait = sum(e - s for _, _, s, e, _ in waits if start <= s and e <= end)
        gap = start - previous_end
        idle += gap if i > 1 else 0.0
        print(
            f"| {i} | {rows:,} | {ms(start):,.0f} | {ms(end):,.0f} | {chdb * 1e3:,.0f} | "
            f"{wait * 1e3:,.0f} | {(end - start - chdb - wait) * 1e3:,.0f} | {gap * 1e3:,.0f} |"
        )
        previous_end = end
    commits = [s for s in spans if s[1] == "commit"]
    blocked = sum(s[3] - s[2] for s in reads if s[2] >= first_record)
    main_busy = (writes[-1][2] - first_record) - sum(
        s[3] - s[2] for s in reads if first_record <= s[2] <= writes[-1][2]
    )
    collected = sum(s[3] - s[2] for s in spans if s[1].startswith("gc"))
    print(
        f"\nassignment -> first record {ms(first_record):,.0f} ms; first record -> first write "
        f"{(writes[0][2] - first_record) * 1e3:,.0f} ms; writer idle between writes "
        f"{idle * 1e3:,.0f} ms; last write -> its commit done "
        f"{(commits[-1][3] - writes[-1][3]) * 1e3:,.0f} ms; end {ms(commits[-1][3]):,.0f} ms"
    )
    print(
        f"main thread from first record to last write: parse and loop {main_busy * 1e3:,.0f} ms, "
        f"in consume() {blocked * 1e3:,.0f} ms in all; garbage collector {collected * 1e3:,.0f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--decisions", type=int, default=60_000)
    ap.add_argument("--batch-size", type=int, default=20_000)
    args = ap.parse_args()
    records = worker_decisions(args.decisions)
    to_store = sum(1 for _, v in records if b'"reemitted":true' not in v)
    spans: list[Span] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        prefix = f"st{uuid.uuid4().hex[:6]}."
        catalog = TopicCatalog(prefix=prefix, partitions=PARTITIONS, replication=1)
        ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog, timeout=10)
        producer = Producer(
            {
                "bootstrap.servers": broker.bootstrap,
                "partitioner": "murmur2_random",
                "linger.ms": 20,
                "queue.buffering.max.messages": 1_000_000,
            }
        )
        for key, value in records:
            producer.produce(catalog.decisions, value, key)
            producer.poll(0)
        assert producer.flush(60) == 0
        settings = Settings(
            bootstrap=broker.bootstrap,
            topic_prefix=prefix,
            partitions=PARTITIONS,
            clickhouse_dsn=f"chdb://{Path(tmp) / 'chdb'}",
            session_timeout_s=6,
            sink_batch_size=args.batch_size,
            app_id="timeline",
        )
        with timed_sink(spans):
            run = sink_rate(settings, len(records), to_store, broker.pid)
    print(f"\n{_machine()}", file=sys.stdout)
    print(
        f"{len(records):,} decisions, batches of {args.batch_size:,}: {run.rate:,.0f} rows/s "
        f"from assignment, {run.sink_us:.1f} us of sink CPU a row (timed: a little slower)\n"
    )
    report(spans)


if __name__ == "__main__":
    main()
