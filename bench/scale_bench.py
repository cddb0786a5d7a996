"""Scale-out: events/s of one ``baton worker`` against two in one consumer group, same run.

Each phase makes fresh topics, starts the workers, waits until the group has settled (every
worker logged its share of the partitions), then produces the backlog at once and measures
from the first batch's ``decided_at`` to the end of the last (each worker stamps a batch before
deciding it, so its last batch is timed at its own rate: ``makespan_rate``; both workers'
clocks are this host's).
Phases alternate (1, 2, 1, 2, ...) so the machine's noise falls on both; CPU is the workers'
user + system time per event, next to the broker's, and the cores the workers, the broker and
this process (it produces the backlog and reads the decisions) kept busy meanwhile: on a host
with few cores that sum says whether a second worker had a core to run on.

    python -m bench.scale_bench                    # 60,000 events over 8,000 runs, 2 rounds
    python -m bench.scale_bench --workers 1 2 4 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import KafkaError

from baton.schemas.events import ApprovalDenied, ApprovalGranted
from baton.streams.embedded import EmbeddedBroker
from baton.streams.topics import TopicCatalog, ensure_topics
from bench.engine_bench import build_workload
from bench.worker_bench import (
    PARTITIONS,
    _consumer,
    _cpu_seconds,
    _expected_decisions,
    _produce,
    _start_worker,
    fetched,
    makespan_rate,
)

_OWNS = re.compile(r"owns partitions \[([0-9, ]*)\]")


def _owned(log_path: Path) -> set[int] | None:
    """The partitions a worker last said it owns (None before it said so)."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    found = _OWNS.findall(text)
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else None


def _settled(logs: list[Path]) -> bool:
    """Every worker owns its share and together they own every partition once."""
    owned = [_owned(p) for p in logs]
    if any(o is None for o in owned):
        return False
    share = PARTITIONS // len(logs)
    union = set().union(*owned)  # type: ignore[arg-type]
    return union == set(range(PARTITIONS)) and all(len(o) >= share for o in owned)  # type: ignore[arg-type]


def _host_busy_seconds() -> float:
    """CPU seconds every core of the host has spent busy so far (Linux /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def phase(broker: EmbeddedBroker, workdir: Path, workers: int, items: list, expected: int) -> dict:
    prefix = f"scale{uuid.uuid4().hex[:6]}."
    catalog = TopicCatalog(prefix=prefix, partitions=PARTITIONS, replication=1)
    ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog, timeout=10)
    procs, logs = [], []
    for i in range(workers):
        wd = workdir / f"{prefix}{i}"
        wd.mkdir()
        procs.append(_start_worker(broker.bootstrap, prefix, wd, "at_least_once"))
        logs.append(wd / "worker-at_least_once.log")
    decisions = _consumer(broker.bootstrap, catalog.decisions)
    try:
        deadline = time.monotonic() + 120
        while not _settled(logs):
            if time.monotonic() > deadline:
                raise SystemExit(f"{workers} workers did not settle: {[_owned(p) for p in logs]}")
            time.sleep(0.2)
        cpu0 = sum(_cpu_seconds(p.pid) for p in procs)
        # the host's other CPU users while the backlog is decided: the broker, this process
        # (it produces the backlog and reads the decisions)
        broker0, own0, t0 = _cpu_seconds(broker.pid or 0), time.process_time(), time.monotonic()
        host0 = _host_busy_seconds()
        _produce(broker.bootstrap, catalog.requests, [(k, v) for k, v, a in items if not a])
        _produce(broker.bootstrap, catalog.approvals, [(k, v) for k, v, a in items if a])
        seen = 0
        #: each worker's decisions by decided_at (one stamp a batch: makespan_rate)
        stamps: dict[str, Counter[str]] = defaultdict(Counter)
        deadline = time.monotonic() + 300
        while seen < expected and time.monotonic() < deadline:
            for msg in fetched(decisions, 0.2):
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(msg.error())
                    continue
                decision = orjson.loads(msg.value())
                stamps[decision["worker"]][decision["decided_at"]] += 1
                seen += 1
        wall = time.monotonic() - t0
        cpu = sum(_cpu_seconds(p.pid) for p in procs) - cpu0
        broker_cpu = _cpu_seconds(broker.pid or 0) - broker0
        own_cpu = time.process_time() - own0
        host_cpu = _host_busy_seconds() - host0
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(30)
        decisions.close()
    if seen < expected:
        raise SystemExit(f"{workers} workers: only {seen} of {expected} decisions arrived")
    return {
        "events_per_s": makespan_rate(stamps, len(items)),
        "cpu_us": cpu / len(items) * 1e6,
        "broker_us": broker_cpu / len(items) * 1e6,
        # cores busy from the backlog's produce to its last decision read
        "cores": (cpu / wall, broker_cpu / wall, own_cpu / wall, host_cpu / wall),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--runs", type=int, default=8_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    workload = build_workload(args.runs)[: args.events]
    items = [
        (run_id.encode(), ev.to_json(), isinstance(ev, (ApprovalGranted, ApprovalDenied)))
        for run_id, ev, _ in workload
    ]
    expected = _expected_decisions(workload)
    results: dict[int, list[dict]] = {k: [] for k in args.workers}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        for r in range(args.rounds):
            for k in args.workers:
                print(f"round {r + 1}: {k} worker(s) ...", file=sys.stderr)
                results[k].append(phase(broker, Path(tmp), k, items, expected))
    print(
        f"\nmachine: {platform.node()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"{len(items):,} events over {args.runs:,} runs, {PARTITIONS} partitions, one group; "
        f"{args.rounds} rounds, alternating\n"
    )
    print(
        "| workers | events/s per round | best | CPU µs/event | broker CPU µs/event "
        "| cores busy: workers + broker + bench (whole host) | vs 1 worker (best) |"
    )
    print("|---:|---|---:|---:|---:|---|---:|")
    one = max(x["events_per_s"] for x in results[args.workers[0]])
    for k, rows in results.items():
        rates = [x["events_per_s"] for x in rows]
        cpu = min(x["cpu_us"] for x in rows)
        broker = min(x["broker_us"] for x in rows)
        cores = " · ".join("{:.2f} + {:.2f} + {:.2f} ({:.2f})".format(*x["cores"]) for x in rows)
        print(
            f"| {k} | {' · '.join(f'{x:,.0f}' for x in rates)} | {max(rates):,.0f} "
            f"| {cpu:.0f} | {broker:.0f} | {cores} | {max(rates) / one:.2f}x |"
        )
    print(
        f"\n{os.cpu_count()} cores on this host: when the whole host's busy cores come near it, "
        "a second worker can only take CPU time from the first (and from the broker)."
    )


if __name__ == "__main__":
    main()
