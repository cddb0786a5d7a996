"""Rows per second of the audit sink (`baton sink` internals) into embedded ClickHouse (chDB).

Produces N decision records (the worker's JSON) to a decisions topic on an embedded broker,
then runs the real sink (`baton.sinks.sink.run_sink`) against a fresh chDB directory and times
how long it takes until every row is stored, with the same run's plain consume-only rate of
the topic as the baseline (the ceiling of any sink reading it).

    python -m bench.sink_bench                 # 50,000 decisions
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from baton.processors.engine import decide
from baton.schemas.policy import load_policy
from baton.schemas.settings import Settings
from baton.sinks.sink import SinkStats, run_sink
from baton.streams.embedded import EmbeddedBroker
from baton.streams.topics import TopicCatalog, ensure_topics
from bench.engine_bench import build_workload


def _decisions(n: int) -> list[tuple[bytes, bytes]]:
    policy = load_policy(None)
    table: dict = {}
    out: list[tuple[bytes, bytes]] = []
    now = datetime.now(UTC)
    for run_id, event, _ in build_workload(max(100, n // 10)):
        state, ds = decide(table.get(run_id), event, policy, now)
        table[run_id] = state
        out.extend((run_id.encode(), d.to_json()) for d in ds)
        if len(out) >= n:
            break
    return out[:n]


def _consume_only(bootstrap: str, topic: str, n: int) -> float:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--decisions", type=int, default=50_000)
    args = ap.parse_args()
    records = _decisions(args.decisions)
    n = len(records)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        prefix = f"sb{uuid.uuid4().hex[:6]}."
        catalog = TopicCatalog(prefix=prefix, partitions=8, replication=1)
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
        base = _consume_only(broker.bootstrap, catalog.decisions, n)

        settings = Settings(
            bootstrap=broker.bootstrap,
            topic_prefix=prefix,
            partitions=8,
            clickhouse_dsn=f"chdb://{Path(tmp) / 'chdb'}",
            session_timeout_s=6,
        )
        stop = threading.Event()
        stats: dict[str, SinkStats] = {}
        marks: list[tuple[float, int]] = []

        def report(s: SinkStats) -> None:
            marks.append((time.perf_counter(), s.rows))
            if s.rows >= n:
                stop.set()

        def ready(sink: object, _server: object) -> None:
            stats["sink"] = sink.stats  # type: ignore[attr-defined]

        t = threading.Thread(
            target=lambda: run_sink(
                settings, stop, sql_port=None, on_ready=ready, on_report=report, report_every_s=0.2
            ),
            daemon=True,
        )
        t.start()
        t.join(300)
        stop.set()
    rows = [(t_, r) for t_, r in marks if r > 0]
    if len(rows) < 2:
        raise SystemExit(f"the sink stored too little: {marks[-3:]}")
    (t0, r0), (t1, r1) = rows[0], rows[-1]
    rate = (r1 - r0) / (t1 - t0) if t1 > t0 else 0.0
    print(
        f"\nmachine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(f"{n:,} decisions, 8 partitions, chDB with the audit views\n")
    print(f"| {'variant':<40} | {'rows/s':>9} |")
    print(f"|{'-' * 42}|{'-' * 11}|")
    print(f"| {'confluent-kafka consume only (baseline)':<40} | {base:>9,.0f} |")
    print(f"| {'baton sink into chDB (stored rows)':<40} | {rate:>9,.0f} |")
    print(f"\nrows stored: {r1:,} of {n:,}", file=sys.stderr)


if __name__ == "__main__":
    main()
