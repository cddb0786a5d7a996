"""End-to-end throughput and latency of one governance worker process, against a baseline.

Both sides run on the same embedded broker in the same invocation (these machines are
noisy: compare the ratio, not absolute numbers):

* baseline: a plain confluent-kafka consume -> produce passthrough of the same events
  (the ceiling of any Python processor on this broker);
* baton: a real ``baton worker`` subprocess deciding the same events (engine_bench's
  realistic mix: task trees, completions, approvals, conflicts, redeliveries) and
  publishing every decision plus its changelog record.

Throughput is measured over the span of ``decided_at`` (one stamp a batch) of a backlog
produced before the worker starts, counting the batches inside it (``backlog_rate``).
Latency is measured afterwards at a moderate, steady rate: the time from producing a handoff
to reading its decision, p50/p99.

    python -m bench.worker_bench                 # 30,000 events over 4,000 runs, both guarantees
    python -m bench.worker_bench --guarantee exactly_once
    python -m bench.worker_bench --events 60000 --rate 2000
    python -m bench.worker_bench --guarantee at_least_once \
        --producers aiokafka,librdkafka,aiokafka,librdkafka   # BATON_WORKER_PRODUCER, alternating
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from baton.schemas.events import ApprovalDenied, ApprovalGranted, HandoffRequested
from baton.streams.embedded import EmbeddedBroker
from baton.streams.net import free_port
from baton.streams.topics import TopicCatalog, ensure_topics
from bench.engine_bench import build_workload

PARTITIONS = 8


def _produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    for key, value in items:
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(60) == 0


def fetched(consumer: Consumer, timeout: float, limit: int = 10_000) -> list[Message]:
    """The records one fetch brought: wait up to ``timeout`` for the first, then take what is
    already fetched without waiting. (``consume(n, t)`` waits for ``n`` records *or* ``t``
    seconds: a reader on ``consume(1000, 0.05)`` added up to 50 ms to every latency.)"""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(limit - 1, 0)]


def _consumer(bootstrap: str, topic: str, group: str | None = None) -> Consumer:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"b-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "log_level": 0,
        }
    )
    meta = c.list_topics(topic, timeout=10).topics[topic]
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    return c


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far (Linux /proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _count_until(
    c: Consumer, n: int, timeout: float, pid: int, log_path: Path
) -> tuple[Counter[str], float]:
    """Read until n decisions arrived: (decisions by ``decided_at``, worker CPU s spent since
    the worker logged "ready": it starts on the waiting backlog right then)."""
    seen = 0
    stamps: Counter[str] = Counter()
    cpu0 = None
    deadline = time.monotonic() + timeout
    while seen < n and time.monotonic() < deadline:
        if cpu0 is None and " ready (policy" in log_path.read_text(errors="replace"):
            cpu0 = _cpu_seconds(pid)
        for msg in fetched(c, 0.2):
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(msg.error())
                continue
            stamps[orjson.loads(msg.value())["decided_at"]] += 1
            seen += 1
    return stamps, _cpu_seconds(pid) - (cpu0 or 0.0)


def backlog_rate(stamps: Counter[str], events: int) -> float:
    """Events/s of a backlog whose decisions carry ``stamps`` (decisions by ``decided_at``);
    NaN when it was decided in one batch (too small a backlog to measure).

    The worker stamps ``decided_at`` once per batch, before deciding it (processors/app.py),
    so the span from the first to the last stamp holds every batch but the last: the rate is
    the decisions stamped before it over the span, in events. (The whole backlog over the span
    read three batches of 10,000 1.5x too fast: issue 15's "dip", bench/RESULTS.md H8.)
    """
    when = {stamp: datetime.fromisoformat(stamp) for stamp in stamps}
    first, last = min(stamps, key=when.__getitem__), max(stamps, key=when.__getitem__)
    span = (when[last] - when[first]).total_seconds()
    seen = sum(stamps.values())
    print(
        f"  {seen:,} decisions in {len(stamps)} batches over {span:.2f} s; the last batch "
        f"({stamps[last]:,}) is outside the span",
        file=sys.stderr,
    )
    return (seen - stamps[last]) / span * events / seen if span > 0 else float("nan")


def makespan_rate(stamps: dict[str, Counter[str]], events: int) -> float:
    """Events/s of a backlog several workers decided together (``stamps``: each worker's
    decisions by ``decided_at``): the events over the span from the first batch's stamp to the
    end of the last one, each worker's last batch lasting what its own rate says (a stamp is
    taken before its batch is decided, see :func:`backlog_rate`); NaN when a worker decided
    its share in one batch. The span of the stamps alone leaves the last batches out: with
    two workers taking three 10,000-event batches each it read up to 1.5x high."""
    first, end = None, None
    for mine in stamps.values():
        rate = backlog_rate(mine, sum(mine.values()))  # this worker's decisions/s
        if math.isnan(rate):  # one batch
            return float("nan")
        when = {stamp: datetime.fromisoformat(stamp) for stamp in mine}
        last = max(mine, key=when.__getitem__)
        start = min(when.values())
        done = when[last].timestamp() + mine[last] / rate
        first = start.timestamp() if first is None else min(first, start.timestamp())
        end = done if end is None else max(end, done)
    if first is None or end is None or end <= first:
        return float("nan")
    return events / (end - first)


def passthrough(bootstrap: str, src: str, dst: str, n: int) -> float:
    """Events/s of a plain consume -> produce loop over n pre-produced events."""
    c = _consumer(bootstrap, src)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    done, first = 0, 0.0
    deadline = time.monotonic() + 120
    while done < n and time.monotonic() < deadline:
        for msg in fetched(c, 0.2, 1000):
            if msg.error():
                continue
            if done == 0:
                first = time.perf_counter()
            p.produce(dst, msg.value(), msg.key(), partition=msg.partition())
            done += 1
        p.poll(0)
    p.flush(60)
    elapsed = time.perf_counter() - first
    c.close()
    return done / elapsed if elapsed > 0 else 0.0


def _start_worker(
    bootstrap: str, prefix: str, workdir: Path, guarantee: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BATON_BOOTSTRAP": bootstrap,
        "BATON_TOPIC_PREFIX": prefix,
        "BATON_PARTITIONS": str(PARTITIONS),
        "BATON_APP_ID": f"bench-{prefix.rstrip('.')}",
        "BATON_WEB_PORT": str(free_port()),
        "BATON_WORKER_DATA_DIR": str(workdir / "w"),
        "BATON_SESSION_TIMEOUT_S": "6",
        "BATON_PROCESSING_GUARANTEE": guarantee,
    }
    log = open(workdir / f"worker-{guarantee}.log", "ab")  # noqa: SIM115
    cmd = [sys.executable, "-m", "baton.cli", "-v", "worker"]
    if os.environ.get("BENCH_PYSPY"):  # profile the worker: BENCH_PYSPY=out.txt
        cmd = [
            "py-spy",
            "record",
            "-f",
            "raw",
            "--gil",
            "-o",
            os.environ["BENCH_PYSPY"],
            "-r",
            "200",
            "--",
            *cmd,
        ]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def latency(
    bootstrap: str, catalog: TopicCatalog, rate: int, seconds: float
) -> tuple[list[float], list[float]]:
    """Seconds from producing a handoff to reading its decision, at a steady rate; and from
    producing it to the worker deciding it (decided_at - event_time)."""
    sent: dict[str, float] = {}
    got: list[float] = []
    inside: list[float] = []
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"lat-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
            "log_level": 0,
        }
    )
    meta = c.list_topics(catalog.decisions, timeout=10).topics[catalog.decisions]
    # OFFSET_END, not ListOffsets: Tansu answers that with the start of the last batch + 1
    c.assign([TopicPartition(catalog.decisions, p, OFFSET_END) for p in meta.partitions])
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for msg in fetched(c, 0.05):
                if msg.error():
                    continue
                d = orjson.loads(msg.value())
                t = sent.pop(d["request_id"], None)
                if t is not None:
                    got.append(time.perf_counter() - t)
                    # worker side only: event_time is stamped just before produce
                    inside.append(
                        (
                            datetime.fromisoformat(d["decided_at"])
                            - datetime.fromisoformat(d["event_time"])
                        ).total_seconds()
                    )

    reader = threading.Thread(target=read)
    reader.start()
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 0})
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        run = f"lat-{i % 500}"
        rid = f"lat-{uuid.uuid4().hex[:10]}"
        target = start + i / rate
        while time.perf_counter() < target:
            time.sleep(0.0005)
        ev = HandoffRequested(
            request_id=rid,
            run_id=run,
            task_id=f"t{i}",
            from_agent="a",
            to_agent="b",
            event_time=datetime.now(UTC),
        )
        sent[rid] = time.perf_counter()
        p.produce(catalog.requests, ev.to_json(), run.encode())
        p.poll(0)
    p.flush(10)
    deadline = time.monotonic() + 15
    while sent and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    reader.join()
    c.close()
    return got, inside


GUARANTEES = ("at_least_once", "exactly_once")


def _topics_with_backlog(broker: EmbeddedBroker, items: list) -> tuple[str, TopicCatalog]:
    """Fresh topics under a new prefix, with ``items`` produced: approvals to the approvals
    topic (the worker takes them from nowhere else), every other event to the requests one."""
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    catalog = TopicCatalog(prefix=prefix, partitions=PARTITIONS, replication=1)
    ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog, timeout=10)
    _produce(broker.bootstrap, catalog.requests, [(k, v) for k, v, a in items if not a])
    _produce(broker.bootstrap, catalog.approvals, [(k, v) for k, v, a in items if a])
    return prefix, catalog


def run_worker(
    broker: EmbeddedBroker, workdir: Path, items: list, workload: list, guarantee: str, args: Any
) -> tuple[float, int, float, list[float], list[float]]:
    """(events/s, decisions seen, CPU s, latencies, inside latencies) of one worker process
    deciding ``items`` from its own topics."""
    n = len(items)
    print(f"baton worker, {guarantee}: producing the backlog ...", file=sys.stderr)
    prefix, catalog = _topics_with_backlog(broker, items)
    decisions = _consumer(broker.bootstrap, catalog.decisions)
    worker = _start_worker(broker.bootstrap, prefix, workdir, guarantee)
    log_path = workdir / f"worker-{guarantee}.log"
    try:
        # every event yields at least one decision; count decisions of the backlog only
        expected = _expected_decisions(workload[: args.events])
        stamps, cpu = _count_until(decisions, expected, 300, worker.pid, log_path)
        seen = sum(stamps.values())
        # one batch: too small a backlog to measure, reported as such rather than as 0/s
        worker_eps = backlog_rate(stamps, n) if stamps else float("nan")
        lat, inside = latency(broker.bootstrap, catalog, args.rate, args.seconds)
    finally:
        # SIGINT: py-spy (BENCH_PYSPY) writes its profile on it; a worker stops on it
        worker.send_signal(__import__("signal").SIGINT)
        worker.wait(30)
        decisions.close()
    for line in log_path.read_text().splitlines():
        if "events in" in line:
            print("  " + line.split("] ", 3)[-1], file=sys.stderr)
    if seen < expected:
        print(log_path.read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"{guarantee}: only {seen} of {expected} decisions arrived")
    return worker_eps, seen, cpu, lat, inside


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=4_000)
    ap.add_argument("--rate", type=int, default=500, help="events/s for the latency phase")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of the latency phase")
    ap.add_argument(
        "--guarantee",
        choices=[*GUARANTEES, "both"],
        default="both",
        help="processing guarantee of the measured worker (default: both, one after the other)",
    )
    ap.add_argument(
        "--producers",
        default="",
        help="at_least_once: one worker per BATON_WORKER_PRODUCER listed, in this order "
        "(e.g. aiokafka,librdkafka,aiokafka,librdkafka); default: the setting's default",
    )
    ap.add_argument(
        "--signing",
        default="",
        help="one worker per entry, in this order, signing its decisions (on: a fresh "
        "BATON_DECISION_SIGNING_KEY) or not (off), e.g. off,on,off,on",
    )
    args = ap.parse_args()
    guarantees = GUARANTEES if args.guarantee == "both" else (args.guarantee,)

    workload = build_workload(args.runs, positions="topic", partitions=PARTITIONS)
    items = [
        (run_id.encode(), ev.to_json(), isinstance(ev, (ApprovalGranted, ApprovalDenied)))
        for run_id, ev, _ in workload
    ][: args.events]
    n = len(items)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        workdir = Path(tmp)
        print(f"producing {n:,} events over {args.runs:,} runs ...", file=sys.stderr)
        prefix, catalog = _topics_with_backlog(broker, items)

        print("baseline: confluent-kafka passthrough ...", file=sys.stderr)
        from confluent_kafka.admin import AdminClient, NewTopic

        out_topic = f"{prefix}passthrough.out"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic(out_topic, PARTITIONS, 1)])[out_topic].result(10)
        requests = sum(1 for *_, approval in items if not approval)
        base = passthrough(broker.bootstrap, catalog.requests, out_topic, requests)
        for guarantee in guarantees:
            if args.signing:
                results.update(_signing_sides(broker, workdir, items, workload, guarantee, args))
                continue
            producers = args.producers.split(",") if guarantee == "at_least_once" else []
            for i, producer in enumerate(producers or [""]):
                if producer:
                    os.environ["BATON_WORKER_PRODUCER"] = producer
                name = f"{guarantee}, {producer} #{i + 1}" if producer else guarantee
                results[name] = run_worker(broker, workdir, items, workload, guarantee, args)
                os.environ.pop("BATON_WORKER_PRODUCER", None)

    rows = [("confluent-kafka passthrough (baseline)", f"{base:,.0f}", "", "", "")]
    for guarantee, (worker_eps, _seen, cpu, lat, _inside) in results.items():
        p50, p99 = _p50_p99_ms(lat)
        rows.append(
            (
                f"baton worker, {guarantee}",
                "one batch" if math.isnan(worker_eps) else f"{worker_eps:,.0f}",
                f"{p50:.1f}",
                f"{p99:.1f}",
                f"{cpu / n * 1e6:.0f}",
            )
        )
    print(
        f"\nmachine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"workload: {n:,} events over {args.runs:,} runs, {PARTITIONS} partitions, every "
        f"decision published; latency at {args.rate:,} events/s for {args.seconds:g} s\n"
    )
    print(
        f"| {'variant':<42} | {'events/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} "
        f"| {'CPU us/event':>12} |"
    )
    print(f"|{'-' * 44}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 14}|")
    for name, eps, p50, p99, cpu_us in rows:
        print(f"| {name:<42} | {eps:>9} | {p50:>7} | {p99:>7} | {cpu_us:>12} |")
    print()
    for guarantee, (worker_eps, seen, _cpu, lat, inside) in results.items():
        p50, p99 = _p50_p99_ms(inside)
        print(
            f"{guarantee}: worker / baseline {worker_eps / base:.2f}; decisions in backlog "
            f"{seen:,}; latency samples {len(lat):,}; inside Baton (produce -> decided_at) "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        )


def _signing_sides(
    broker: EmbeddedBroker, workdir: Path, items: list, workload: list, guarantee: str, args: Any
) -> dict:
    """One worker per ``--signing`` entry, alternating: signing with a fresh key, or not."""
    from baton.schemas.signing import new_private_key, write_private_key

    key = workdir / "bench-decision.key"
    if not key.exists():
        write_private_key(new_private_key(), key)
    out = {}
    for i, side in enumerate(args.signing.split(",")):
        if side.strip() == "on":
            os.environ["BATON_DECISION_SIGNING_KEY"] = str(key)
        try:
            name = f"{guarantee}, {'signed' if side.strip() == 'on' else 'unsigned'} #{i + 1}"
            out[name] = run_worker(broker, workdir, items, workload, guarantee, args)
        finally:
            os.environ.pop("BATON_DECISION_SIGNING_KEY", None)
    return out


def _p50_p99_ms(seconds: list[float]) -> tuple[float, float]:
    """Median and 99th percentile in ms (NaN below 100 samples, too few for a p99)."""
    if len(seconds) < 100:
        return float("nan"), float("nan")
    q = statistics.quantiles(seconds, n=100)
    return q[49] * 1000, q[98] * 1000


def _expected_decisions(workload: list) -> int:
    """Decisions the backlog yields, from the pure engine (the worker must match it)."""
    from baton.processors.engine import decide
    from baton.schemas.policy import load_policy

    policy = load_policy(None)
    table: dict = {}
    total = 0
    for run_id, ev, now in workload:
        st, out = decide(table.get(run_id), ev, policy, now)
        table[run_id] = st
        total += len(out)
    return total


if __name__ == "__main__":
    main()
