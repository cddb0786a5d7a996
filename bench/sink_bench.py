"""Rows per second of the audit sink (`baton sink` internals) into embedded ClickHouse (chDB).

Makes N decisions with the worker's own batch step (engine_bench's realistic mix through
``BatchProcessor``: every field the worker publishes, the recorded input and the hash chain
included), produces them to an 8-partition decisions topic on an embedded broker, then in
the same run:

* reads the topic with a plain confluent-kafka consumer and nothing else (the baseline: the
  ceiling of any sink reading it);
* runs the real sink (``run_sink``) into a fresh chDB directory with every view, once per
  variant, and times it from its partitions' assignment to the last row stored.

Variants: the sink as shipped; then each of its speed-ups taken away alone, to show what
each is worth (``--variants all``): ``no shortcut`` (every record through pydantic and
``rows.decision_row``), ``serial`` (no parse/insert overlap), ``table types`` (the insert
encodes LowCardinality columns in Python, as clickhouse-connect does by default).

    python -m bench.sink_bench                          # 100,000 decisions, the sink as shipped
    python -m bench.sink_bench --variants all           # and without each speed-up
    python -m bench.sink_bench --batch-size 20000       # another BATON_SINK_BATCH_SIZE
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from baton.processors.batch import BatchProcessor, InputRecord
from baton.schemas.policy import load_policy
from baton.schemas.settings import Settings
from baton.sinks.sink import AuditSink, SinkStats, run_sink
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog, ensure_topics
from bench.engine_bench import build_workload

PARTITIONS = 8
APPROVALS = "gov.approvals"


def worker_decisions(n: int) -> list[tuple[bytes, bytes]]:
    """``n`` decisions as the worker publishes them: (key, JSON). One workload, decided again
    under fresh run ids (``run-`` renamed ``rN-`` in keys and events) until there are ``n``."""
    proc = BatchProcessor(
        load_policy(None), PARTITIONS, {}, worker="bench", approvals_topic=APPROVALS
    )
    now = datetime.now(UTC)
    workload = [
        (run.encode(), ev.to_json(), ev.type.startswith("approval"))
        for run, ev, _ in build_workload(max(100, min(n // 6, 4000)))
    ]
    out: list[tuple[bytes, bytes]] = []
    round_ = 0
    while len(out) < n:
        fresh = b"r%d-" % round_
        round_ += 1
        recs = []
        for i, (key, value, approval) in enumerate(workload):
            key = key.replace(b"run-", fresh)
            topic = APPROVALS if approval else "gov.handoff.requests"
            recs.append(
                InputRecord(
                    topic, partition_for(key, PARTITIONS), i, key, value.replace(b"run-", fresh)
                )
            )
        for i in range(0, len(recs), 1000):
            produced = proc.process(recs[i : i + 1000], now).decisions
            out.extend((d.run_id.encode(), d.to_json()) for _, d in produced)
    return out[:n]


def consume_only(bootstrap: str, topic: str, n: int) -> float:
    """Records per second of a bare consumer reading ``n`` records of ``topic`` from the start."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    got, first = 0, 0.0
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        for msg in c.consume(5000, 0.2):
            if not msg.error():
                first = first or time.perf_counter()
                got += 1
    elapsed = time.perf_counter() - first
    c.close()
    return got / elapsed if elapsed > 0 else 0.0


@contextlib.contextmanager
def _variant(name: str) -> Iterator[None]:
    """The sink with one speed-up taken away (bench only: patches module attributes)."""
    import baton.sinks.audit_batch as audit_batch
    import baton.sinks.sink as sink

    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, attr: str, value: Any) -> None:
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    if name == "no shortcut":
        patch(audit_batch, "shortcut_row", lambda *args: None)
    elif name == "serial":
        patch(AuditSink, "pipelined", False)
    elif name == "table types":
        patch(sink, "insert_types", lambda client, table, columns: None)
    try:
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


def sink_rate(settings: Settings, n: int) -> tuple[float, SinkStats]:
    """Rows per second of ``run_sink`` storing ``n`` rows: from its assignment to the last row."""
    stop = threading.Event()
    box: dict[str, Any] = {}
    done_at: list[float] = []

    def report(s: SinkStats) -> None:
        if s.rows + s.rejected >= n and not done_at:
            done_at.append(time.perf_counter())
            stop.set()

    def ready(sink: AuditSink, _server: object) -> None:
        box["sink"] = sink
        on_assign = sink._on_assign  # the bench times from the assignment

        def timed(consumer: Any, partitions: list[Any]) -> None:
            box.setdefault("assigned", time.perf_counter())
            on_assign(consumer, partitions)

        sink._on_assign = timed  # type: ignore[method-assign]

    def target() -> None:
        try:
            run_sink(
                settings,
                stop,
                sql_port=None,
                on_ready=ready,  # type: ignore[arg-type]
                on_report=report,
                report_every_s=0.02,
            )
        except BaseException as exc:  # reported below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(600)
    stop.set()
    t.join(60)
    if "error" in box:
        raise SystemExit(f"the sink failed: {box['error']!r}")
    stats: SinkStats = box["sink"].stats
    if not done_at or "assigned" not in box:
        raise SystemExit(f"the sink stored {stats.rows} of {n} rows in time")
    return n / (done_at[0] - box["assigned"]), stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--decisions", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=Settings().sink_batch_size)
    ap.add_argument("--variants", choices=("shipped", "all"), default="shipped")
    args = ap.parse_args()
    records = worker_decisions(args.decisions)
    n = len(records)
    size = sum(len(v) for _, v in records) / n
    with_input = sum(1 for _, v in records if b'"input":"' in v) / n
    variants = ["as shipped"]
    if args.variants == "all":
        variants += ["no shortcut", "serial", "table types"]
    results: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        prefix = f"sb{uuid.uuid4().hex[:6]}."
        catalog = TopicCatalog(prefix=prefix, partitions=PARTITIONS, replication=1)
        ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog, timeout=10)
        p = Producer(
            {
                "bootstrap.servers": broker.bootstrap,
                "partitioner": "murmur2_random",
                "linger.ms": 20,
                "queue.buffering.max.messages": 1_000_000,
            }
        )
        for key, value in records:
            p.produce(catalog.decisions, value, key)
            p.poll(0)
        assert p.flush(60) == 0
        base = consume_only(broker.bootstrap, catalog.decisions, n)
        for i, name in enumerate(variants):
            settings = Settings(
                bootstrap=broker.bootstrap,
                topic_prefix=prefix,
                partitions=PARTITIONS,
                clickhouse_dsn=f"chdb://{Path(tmp) / f'chdb{i}'}",
                session_timeout_s=6,
                sink_batch_size=args.batch_size,
                app_id=f"bench{i}",
            )
            with _variant(name):
                rate, stats = sink_rate(settings, n)
            results.append((name, rate))
            print(f"{name}: {stats.describe()}", file=sys.stderr)
    _print_table(n, size, with_input, args.batch_size, base, results)


def _print_table(
    n: int,
    size: float,
    with_input: float,
    batch_size: int,
    base: float,
    results: list[tuple[str, float]],
) -> None:
    print(
        f"\nmachine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{n:,} worker decisions ({size:,.0f} bytes on average, {with_input:.0%} with their "
        f"input), {PARTITIONS} partitions, batches of {batch_size:,}, chDB with every view\n"
    )
    print(f"| {'variant':<44} | {'rows/s':>9} |")
    print(f"|{'-' * 46}|{'-' * 11}|")
    print(f"| {'confluent-kafka consume only (baseline)':<44} | {base:>9,.0f} |")
    for name, rate in results:
        print(f"| {'baton sink, ' + name:<44} | {rate:>9,.0f} |")


if __name__ == "__main__":
    main()
