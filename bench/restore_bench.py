"""A worker's restart after kill -9: seconds until it decides again, with the changelog read by
librdkafka before Faust's recovery (``BATON_FAST_RESTORE=1``, the default) and with Faust's
recovery alone (``=0``), against a plain confluent read of the same changelog (the baseline).

Each round: fresh topics, one worker decides ``--runs`` runs of engine_bench's mix (4
partitions), its group commits every offset, a plain consumer reads the changelog to its end
(timed), the worker is killed with SIGKILL and a new one started at once with the side's
setting; timed until the new worker decides a probe on every partition. The sides alternate
(1, 0, 1, 0, ...) on the same broker. The restore's own seconds are read from the worker's
log (``restored N runs ... in X s``, the fast side) or Faust's recovery lines.

    python -m bench.restore_bench                 # 20,000 runs (~230k events), 2 rounds
    python -m bench.restore_bench --runs 5000 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from baton.schemas.events import ApprovalDenied, ApprovalGranted
from baton.streams.embedded import EmbeddedBroker
from bench.engine_bench import build_workload
from tests.stack import WorkerProcess, fresh_topics, wait_committed, wait_deciding

PARTITIONS = 4


def _produce(bootstrap: str, catalog: object, runs: int, tag: str) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    sent = 0
    for run_id, event, _ in build_workload(runs, positions="topic", partitions=PARTITIONS):
        run = f"{run_id}-{tag}"
        approval = isinstance(event, (ApprovalGranted, ApprovalDenied))
        topic = catalog.approvals if approval else catalog.requests  # type: ignore[attr-defined]
        value = event.to_json().replace(run_id.encode(), run.encode())
        while True:
            try:
                producer.produce(topic, value, run.encode())
                break
            except BufferError:
                producer.poll(0.1)
        sent += 1
    producer.flush(120)
    return sent


def _plain_read(bootstrap: str, topic: str) -> tuple[int, float]:
    started = time.monotonic()
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"plain-{os.getpid()}-{started}",
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    reader.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    records, ended = 0, set()
    while len(ended) < PARTITIONS and time.monotonic() - started < 300:
        for msg in reader.consume(10_000, 1.0):
            error = msg.error()
            if error is None:
                records += 1
            elif error.code() == KafkaError._PARTITION_EOF:
                ended.add(msg.partition())
    reader.close()
    return records, time.monotonic() - started


def _restore_seconds(log: str) -> float | None:
    found = re.search(r"restored \d+ runs from \d+ changelog partitions .* in ([0-9.]+) s", log)
    if found:
        return float(found.group(1))
    start = re.search(
        r"(\d\d:\d\d:\d\d,\d+) INFO faust.tables.recovery: .*Highwater for active", log
    )
    end = re.search(r"(\d\d:\d\d:\d\d,\d+) INFO faust.tables.recovery: .*Recovery complete", log)
    if not (start and end):
        return None

    def seconds(stamp: str) -> float:
        h, m, rest = stamp.split(":")
        return int(h) * 3600 + int(m) * 60 + float(rest.replace(",", "."))

    return seconds(end.group(1)) - seconds(start.group(1))


def one_round(broker: EmbeddedBroker, workdir: Path, runs: int, fast: str, n: int) -> dict:
    prefix = f"rb{n}{fast}x."
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    env = {"BATON_FAST_RESTORE": fast}
    first = WorkerProcess(
        broker.bootstrap, prefix, workdir, partitions=PARTITIONS, name=f"a{n}{fast}"
    )
    try:
        wait_deciding(broker.bootstrap, catalog)
        events = _produce(broker.bootstrap, catalog, runs, f"{n}{fast}")
        group = f"baton-{prefix.rstrip('.')}"
        wait_committed(broker.bootstrap, group, catalog.requests, PARTITIONS, 900)
        changelog = f"{group}-runs-changelog"
        records, plain_s = _plain_read(broker.bootstrap, changelog)
        first.kill9()
        killed = time.monotonic()
        second = WorkerProcess(
            broker.bootstrap,
            prefix,
            workdir,
            partitions=PARTITIONS,
            name=f"b{n}{fast}",
            extra_env=env,
        )
        try:
            wait_deciding(broker.bootstrap, catalog, timeout=1800)
            again_s = time.monotonic() - killed
            restore_s = _restore_seconds(second.log_path.read_text(errors="replace"))
        finally:
            second.stop()
    finally:
        first.stop()
    return {
        "fast": fast,
        "events": events,
        "records": records,
        "plain_s": plain_s,
        "again_s": again_s,
        "restore_s": restore_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=Path(tmp)) as broker:
        for n in range(args.rounds):
            for fast in ("1", "0"):
                print(f"round {n + 1}, BATON_FAST_RESTORE={fast} ...", file=sys.stderr)
                rows.append(one_round(broker, Path(tmp), args.runs, fast, n))
    print(
        f"\nmachine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"load {os.getloadavg()[0]:.1f}; {args.runs:,} runs a round, {PARTITIONS} partitions"
    )
    print(
        "\n| side | events | changelog records | plain confluent read (baseline) s "
        "| restore s | deciding again after kill -9, s |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        side = "librdkafka read, then Faust (=1)" if row["fast"] == "1" else "Faust alone (=0)"
        restore = "" if row["restore_s"] is None else f"{row['restore_s']:.1f}"
        print(
            f"| {side} | {row['events']:,} | {row['records']:,} | {row['plain_s']:.1f} "
            f"| {restore} | {row['again_s']:.1f} |"
        )
    for fast in ("1", "0"):
        again = [r["again_s"] for r in rows if r["fast"] == fast]
        print(f"median deciding again, BATON_FAST_RESTORE={fast}: {statistics.median(again):.1f} s")


if __name__ == "__main__":
    main()
