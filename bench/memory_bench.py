"""Memory per active run, and the sweep's cost, in one process holding 100k and 1M runs.

A worker keeps every run it owns in memory: as a decoded ``RunState`` once it has decided an
event of the run since it started, as the changelog record's bytes while a run restored
after a rebalance has not been touched yet. Per run it also keeps an entry in Faust's
key -> partition map, in the sweep's due index (a heap entry and a dict entry) and in the
batch step's size map. This bench builds N active runs with the real engine (a handoff and
its completion each: owner, agents, task tree, dedup marks, the kept replies, spend), holds
them the way the worker does, and reports the growth of the process's RSS per run:

* ``decoded``: RunState objects + the worker's per-run index entries;
* ``encoded``: the same runs as changelog bytes (restored, not yet touched);
* ``tombstone``: what eviction keeps of a run (``BATON_TOMBSTONE_RETENTION_S``, 30 days);

then times the sweep's due index at that size: popping when nothing is due (the common
second), popping a full sweep's worth (5,000 runs), and rebuilding it after a rebalance,
next to one walk over every run (what a sweep without the index would do each second).

    python -m bench.memory_bench                      # 100,000 and 1,000,000 runs
    python -m bench.memory_bench --runs 100000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from baton.processors.engine import decide, evict
from baton.processors.state import RunState
from baton.processors.sweep import DueIndex
from baton.schemas.events import HandoffCompleted, HandoffRequested
from baton.schemas.policy import load_policy
from baton.streams.partitioner import partition_for

PARTITIONS = 8
SWEEP_LIMIT = 5000  # processors/app.py _SWEEP_LIMIT


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def active_run(run_id: str, policy: object, now: datetime) -> RunState:
    """A run after one handoff and its completion, decided by the engine."""
    handoff = HandoffRequested(
        request_id=f"{run_id}-r1",
        run_id=run_id,
        tenant="acme",
        task_id="task-1",
        from_agent="planner",
        to_agent="coder",
        action="code.write",
        estimated_usd=0.5,
        event_time=now,
    )
    state, _ = decide(None, handoff, policy, now)  # type: ignore[arg-type]
    done = HandoffCompleted(
        request_id=f"{run_id}-r1",
        run_id=run_id,
        tenant="acme",
        task_id="task-1",
        agent="coder",
        cost_usd=0.42,
        tool_calls=3,
        status="ok",
        event_time=now + timedelta(seconds=1),
    )
    state, _ = decide(state, done, policy, now + timedelta(seconds=1))  # type: ignore[arg-type]
    return state


def measure(n: int, as_bytes: bool = False, tombstones: bool = False) -> dict[str, float]:
    """RSS growth per run holding ``n`` runs (decoded, ``as_bytes``, or evicted to their
    ``tombstones``), and sweep timings."""
    policy = load_policy(None)
    now = datetime.now(UTC)
    ids = [f"run-{uuid.UUID(int=i + 1)}" for i in range(n)]
    keys = [r.encode() for r in ids]
    gc.collect()
    half = base = rss_bytes()
    t0 = time.perf_counter()
    # what the worker holds per run: the table's store, Faust's key -> partition map, the
    # batch step's size map, the sweep's due index
    store: dict[bytes, RunState | bytes] = {}
    key_partition: dict[bytes, int] = {}
    sizes: dict[bytes, int] = {}
    due = DueIndex(retention_s=3600.0, tombstone_retention_s=86_400.0)
    encoded_total = 0
    for i, (run_id, key) in enumerate(zip(ids, keys, strict=True)):
        if i == n // 2:
            gc.collect()
            half = rss_bytes()
        state = active_run(run_id, policy, now)
        if tombstones:
            state = state.tombstone(now.timestamp())
        raw = state.to_bytes()
        # a compact copy, as a restored record is (aiokafka's value): orjson's own result
        # keeps its whole growth buffer allocated (a 1.2 KB state held 8 KB of RSS)
        store[key] = bytes(memoryview(raw)) if as_bytes else state
        key_partition[key] = partition_for(key, PARTITIONS)
        sizes[key] = len(raw)
        encoded_total += len(raw)
        due.touch(key, state)
        del state, raw
    build_s = time.perf_counter() - t0
    gc.collect()
    full = rss_bytes()
    # the slope over the second half: the first runs also pay for one-off growth (the
    # collector's garbage high-water mark, dicts and the heap growing to their size class)
    per_run = (full - half) / (n - n // 2)
    if as_bytes or tombstones:
        return {"runs": n, "per_run": per_run, "changelog_bytes_per_run": encoded_total / n}

    # the sweep at this size: nothing due, a full sweep's worth due, a rebuild, one walk
    now_ts = now.timestamp()
    t0 = time.perf_counter()
    idle = sum(1 for _ in due.pop_due(now_ts, SWEEP_LIMIT))
    idle_s = time.perf_counter() - t0
    for key in keys[:SWEEP_LIMIT]:
        due.push(key, now_ts - 1)
    t0 = time.perf_counter()
    popped = sum(1 for _ in due.pop_due(now_ts, SWEEP_LIMIT))
    busy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    due.rebuild_keys(list(store), now_ts)
    rebuild_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    walked = sum(1 for state in store.values() if evict(state, now, 3600.0, 86_400.0))  # type: ignore[arg-type]
    walk_s = time.perf_counter() - t0
    assert idle == 0 and popped == SWEEP_LIMIT and walked == n
    return {
        "runs": n,
        "build_s": build_s,
        "per_run": per_run,
        "rss_growth": full - base,
        "changelog_bytes_per_run": encoded_total / n,
        "sweep_idle_ms": idle_s * 1000,
        "sweep_5000_ms": busy_s * 1000,
        "rebuild_ms": rebuild_s * 1000,
        "walk_ms": walk_s * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, nargs="+", default=[100_000, 1_000_000])
    # a child measuring one size, decoded or as bytes
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--as-bytes", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tombstones", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    gc.set_threshold(100_000, 50, 100)  # as `baton worker` sets it
    if args.one:
        print(json.dumps(measure(args.one, args.as_bytes, args.tombstones)))
        return
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print("each run: one handoff and its completion, decided by the engine\n")
    print(
        "| runs | RSS/run decoded | RSS/run as bytes | changelog record | RSS/tombstone "
        "| sweep, none due | sweep, 5,000 due | re-index | walk every run |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.runs:
        # each size in a fresh process: freed memory is not given back to the OS, so a second
        # size measured in the same process would start from the first one's high-water mark
        child = [sys.executable, "-m", "bench.memory_bench", "--one", str(n)]
        r = json.loads(subprocess.run(child, check=True, capture_output=True).stdout)
        b = json.loads(
            subprocess.run([*child, "--as-bytes"], check=True, capture_output=True).stdout
        )
        t = json.loads(
            subprocess.run([*child, "--tombstones"], check=True, capture_output=True).stdout
        )
        print(
            f"| {n:,} | {r['per_run']:,.0f} B | {b['per_run']:,.0f} B "
            f"| {r['changelog_bytes_per_run']:,.0f} B | {t['per_run']:,.0f} B "
            f"| {r['sweep_idle_ms']:.3f} ms "
            f"| {r['sweep_5000_ms']:.1f} ms | {r['rebuild_ms']:,.0f} ms | {r['walk_ms']:,.0f} ms |",
            flush=True,
        )


if __name__ == "__main__":
    main()
