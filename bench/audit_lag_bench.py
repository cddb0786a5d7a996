"""Audit lag while one worker runs at its full rate: decision published -> row queryable.

On an embedded broker, a real ``baton worker`` and a real ``baton sink`` (chDB with every
view, serving SQL on a free port) run as separate processes, as under ``baton up``. Then:

1. **the worker's rate**: a backlog of events is produced at once; the rate is the decisions
   the worker publishes per second over the span of their ``decided_at``;
2. **the lag run**: events (engine_bench's realistic mix, fresh runs) are produced at that
   rate for ``--seconds`` (60 by default). A reader notes the broker timestamp of every
   decision the worker publishes (the worker's producer stamps it when it sends); a poller
   asks the sink's SQL endpoint every ``--poll`` seconds for the highest stored offset of
   each partition. A decision's lag is the end of the first poll that finds its offset
   stored (the sink stores each partition in offset order) minus its timestamp: an upper
   bound, by at most one poll and its query.

Prints p50/p99/max of the lag, the rates reached, and each process's CPU use.

    python -m bench.audit_lag_bench                 # the worker's rate, then 60 s at it
    python -m bench.audit_lag_bench --rate 10000 --seconds 30
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from baton.sinks.clickhouse import connect
from baton.streams.embedded import EmbeddedBroker
from baton.streams.net import free_port
from baton.streams.topics import TopicCatalog, ensure_topics
from bench.engine_bench import build_workload

PARTITIONS = 8


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process so far (Linux /proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (the sink's parse processes)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(child) for child in task.read_text().split()]
        except (OSError, ValueError):
            continue
    return _cpu_seconds(pid) + sum(_cpu_seconds(child) for child in children)


def _start(command: str, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115  (the child owns it)
    return subprocess.Popen(
        [sys.executable, "-m", "baton.cli", "-v", command, *extra],
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def _wait_for(what: str, check: Any, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


class Events:
    """engine_bench's workload, renamed into fresh runs on every pass: (topic, key, JSON)."""

    def __init__(self, catalog: TopicCatalog, runs: int = 4000) -> None:
        self.items = [
            (
                catalog.approvals if ev.type.startswith("approval") else catalog.requests,
                run.encode(),
                ev.to_json(),
            )
            for run, ev, _ in build_workload(runs)
        ]
        self.round = 0

    def take(self, n: int) -> list[tuple[str, bytes, bytes]]:
        out: list[tuple[str, bytes, bytes]] = []
        while len(out) < n:
            fresh = b"l%d-" % self.round
            self.round += 1
            out.extend(
                (topic, key.replace(b"run-", fresh), value.replace(b"run-", fresh))
                for topic, key, value in self.items
            )
        return out[:n]


def _producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def _send(p: Producer, items: list[tuple[str, bytes, bytes]]) -> None:
    for topic, key, value in items:
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)


class DecisionReader(threading.Thread):
    """Notes the broker timestamp (s) of every decision from now on, per partition in offset
    order, and every ``decided_at``."""

    def __init__(self, bootstrap: str, topic: str, runs: set[bytes] | None = None) -> None:
        super().__init__(daemon=True)
        self.runs = runs  # only decisions of runs with these key prefixes (Events.take's)
        self.published: dict[int, list[tuple[int, float]]] = {p: [] for p in range(PARTITIONS)}
        self.decided: list[str] = []
        self.stop = threading.Event()
        self.c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"lag-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "log_level": 0,
            }
        )
        meta = self.c.list_topics(topic, timeout=10).topics[topic]
        # OFFSET_END, not ListOffsets: Tansu answers that with the start of the last batch + 1
        self.c.assign([TopicPartition(topic, p, OFFSET_END) for p in meta.partitions])

    def run(self) -> None:
        while not self.stop.is_set():
            first = self.c.poll(0.1)
            if first is None:
                continue
            for msg in [first, *self.c.consume(10_000, 0)]:
                if msg.error():
                    continue
                if self.runs is not None and (msg.key() or b"").split(b"-", 1)[0] not in self.runs:
                    continue
                self.published[msg.partition()].append((msg.offset(), msg.timestamp()[1] / 1000))
                self.decided.append(orjson.loads(msg.value())["decided_at"])
        self.c.close()


def worker_rate(
    bootstrap: str, catalog: TopicCatalog, events: Events, n: int
) -> tuple[float, float]:
    """(events/s, decisions/s) the worker takes and publishes working off a backlog of ``n``
    events, over the span of its ``decided_at``."""
    reader = DecisionReader(bootstrap, catalog.decisions)
    reader.start()
    time.sleep(1.0)  # the reader is at the end before the backlog arrives
    p = _producer(bootstrap)
    _send(p, events.take(n))
    p.flush(60)
    # every event gives a decision or more (a completion's record, a stop): wait for n, then
    # for the stragglers
    _wait_for(
        "the worker to work off the backlog",
        lambda: len(reader.decided) >= n and _settled(reader),
        timeout=300,
    )
    reader.stop.set()
    reader.join()
    times = sorted(datetime.fromisoformat(t) for t in reader.decided)
    span = (times[-1] - times[0]).total_seconds()
    return (n / span, len(times) / span) if span > 0 else (0.0, 0.0)


def _settled(reader: DecisionReader, quiet_s: float = 2.0) -> bool:
    """True when no decision arrived for ``quiet_s`` (after at least one)."""
    before = len(reader.decided)
    time.sleep(quiet_s)
    return bool(before) and len(reader.decided) == before


class AuditPoller(threading.Thread):
    """Asks the audit for the highest stored offset per partition every ``every`` s; a
    published decision is stored once its partition's highest stored offset reaches it."""

    def __init__(self, dsn: str, topic: str, reader: DecisionReader, every: float) -> None:
        super().__init__(daemon=True)
        self.client = connect(dsn)  # the sink's SQL endpoint (it holds the chDB directory)
        self.topic, self.reader, self.every = topic, reader, every
        self.timed: list[tuple[float, float]] = []  # (published at, lag) of each seen stored
        self.next = dict.fromkeys(range(PARTITIONS), 0)  # index into reader.published[p]
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            rows = self.client.query(
                "SELECT audit_partition, max(audit_offset) FROM governance.decisions "
                "WHERE audit_topic = {t:String} GROUP BY audit_partition",
                parameters={"t": self.topic},
            ).result_rows
            now = time.time()
            for partition, offset in rows:
                self._seen(int(partition), int(offset), now)
            self.stop.wait(self.every)
        self.client.close()

    def _seen(self, partition: int, stored: int, now: float) -> None:
        published = self.reader.published[partition]
        i = self.next[partition]
        while i < len(published) and published[i][0] <= stored:
            self.timed.append((published[i][1], now - published[i][1]))
            i += 1
        self.next[partition] = i

    def missing(self) -> int:
        return sum(len(self.reader.published[p]) - i for p, i in self.next.items())


def lag_run(
    bootstrap: str,
    catalog: TopicCatalog,
    events: Events,
    dsn: str,
    rate: float,
    seconds: float,
    poll_s: float,
) -> dict[str, Any]:
    """Produce ``rate`` events/s for ``seconds``; the lag of every decision of their runs.

    Only decisions of the runs this run produces count: the backlog's last batches (the worker
    decides a backlog in batches of up to 10,000 events, each decision stamped as it is
    appended, its batch sent once decided) could still be arriving, stamped seconds before,
    when the backlog phase had seen 2 s without a decision (measured: ~2,900 of them, 3 s
    between stamp and arrival, a max of 4-6.5 s that was none of the offered load's)."""
    first_round = events.round
    todo = events.take(int(rate * seconds))
    runs = {b"l%d" % r for r in range(first_round, events.round)}
    reader = DecisionReader(bootstrap, catalog.decisions, runs)
    reader.start()
    poller = AuditPoller(dsn, catalog.decisions, reader, poll_s)
    time.sleep(1.0)
    poller.start()
    p = _producer(bootstrap)
    start = time.perf_counter()
    step = max(1, int(rate / 100))  # 10 ms ticks
    for i in range(0, len(todo), step):
        target = start + i / rate
        while (now := time.perf_counter()) < target:
            time.sleep(min(0.002, target - now))
        _send(p, todo[i : i + step])
    p.flush(60)
    produced_s = time.perf_counter() - start
    # a partition's last records may be re-emitted copies the sink does not store: allow one
    _wait_for(
        "every published decision to be stored",
        lambda: _settled(reader, 3.0) and poller.missing() <= PARTITIONS,
        timeout=180,
    )
    poller.stop.set()
    poller.join()
    reader.stop.set()
    reader.join()
    return {
        "offered": len(todo) / produced_s,
        "decisions": sum(len(v) for v in reader.published.values()),
        "stored": len(poller.timed),
        "lags": sorted(lag for _, lag in poller.timed),
        "timed": poller.timed,
    }


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=0.0, help="events/s (0: the worker's own rate)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between audit polls")
    ap.add_argument(
        "--window", type=float, default=10.0, help="seconds a row of the lag-over-time table"
    )
    ap.add_argument("--backlog", type=int, default=40_000, help="events to find the worker's rate")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        prefix = f"lag{uuid.uuid4().hex[:6]}."
        catalog = TopicCatalog(prefix=prefix, partitions=PARTITIONS, replication=1)
        ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog, timeout=10)
        chdb = Path(tmp) / "chdb"
        env = {
            "BATON_BOOTSTRAP": broker.bootstrap,
            "BATON_TOPIC_PREFIX": prefix,
            "BATON_PARTITIONS": str(PARTITIONS),
            "BATON_APP_ID": f"lag-{prefix.rstrip('.')}",
            "BATON_SESSION_TIMEOUT_S": "6",
            "BATON_CLICKHOUSE_DSN": f"chdb://{chdb}",
            "BATON_WORKER_DATA_DIR": str(Path(tmp) / "w"),
            "BATON_METRICS_PORT": "off",
        }
        worker = _start("worker", {**env, "BATON_WEB_PORT": str(free_port())}, Path(tmp) / "w.log")
        sink = _start("sink", env, Path(tmp) / "s.log", "--sql-port", "0")
        try:
            _wait_for(
                "the sink's SQL endpoint", lambda: (chdb / "baton-sql-endpoint.json").exists()
            )
            _wait_for(
                "the worker to be ready",
                lambda: " ready (policy" in (Path(tmp) / "w.log").read_text(errors="replace"),
            )
            events = Events(catalog)
            measured = worker_rate(broker.bootstrap, catalog, events, args.backlog)
            rate = args.rate or measured[0]
            cpu0 = {"worker": _cpu_seconds(worker.pid), "sink": _tree_cpu_seconds(sink.pid)}
            t0 = time.perf_counter()
            result = lag_run(
                broker.bootstrap, catalog, events, f"chdb://{chdb}", rate, args.seconds, args.poll
            )
            wall = time.perf_counter() - t0
            cpu = {
                "worker": (_cpu_seconds(worker.pid) - cpu0["worker"]) / wall,
                "sink": (_tree_cpu_seconds(sink.pid) - cpu0["sink"]) / wall,
            }
        finally:
            for proc in (worker, sink):
                proc.terminate()
            for proc in (worker, sink):
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    _print(args, measured, rate, result, cpu)


def _print(
    args: Any, measured: tuple[float, float], rate: float, result: dict[str, Any], cpu: dict
) -> None:
    lags = result["lags"]
    print(
        f"\nmachine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"one worker + one sink (chDB, every view) on an embedded broker, {PARTITIONS} partitions; "
        f"the worker's rate on a backlog: {measured[0]:,.0f} events/s, "
        f"{measured[1]:,.0f} decisions/s"
    )
    print(
        f"offered {result['offered']:,.0f} events/s for {args.seconds:.0f} s; "
        f"{result['decisions']:,} decisions published, {result['stored']:,} seen stored; "
        f"CPU: worker {cpu['worker']:.2f} cores, sink {cpu['sink']:.2f} cores (with its parse "
        "processes); "
        f"polled every {args.poll:.2f} s\n"
    )
    if not lags:
        print("no decision was seen stored")
        return
    print("| audit lag, published -> queryable | p50 | p99 | max |")
    print("|---|---|---|---|")
    print(f"| seconds | {statistics.median(lags):.2f} | {_pct(lags, 0.99):.2f} | {lags[-1]:.2f} |")
    _print_windows(result["timed"], args.window)


def _print_windows(timed: list[tuple[float, float]], width_s: float) -> None:
    """The lag by when its decision was published (windows of ``width_s``): where a max came
    from, the run's start or a stall in its middle."""
    if not timed:
        return
    first = min(t for t, _ in timed)
    windows: dict[int, list[float]] = {}
    for t, lag in timed:
        windows.setdefault(int((t - first) // width_s), []).append(lag)
    print("\n| published, s into the run | decisions | p50 | p99 | max |\n|---|---|---|---|---|")
    for w, lags in sorted(windows.items()):
        lags.sort()
        print(
            f"| {w * width_s:g}-{(w + 1) * width_s:g} | {len(lags):,} "
            f"| {statistics.median(lags):.2f} | {_pct(lags, 0.99):.2f} | {lags[-1]:.2f} |"
        )


if __name__ == "__main__":
    main()
