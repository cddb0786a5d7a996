"""Memory per active run, and the sweep's cost, in one process holding 100k and 1M runs.

A worker keeps every run it owns in memory: as a decoded ``RunState`` once it has decided an
event of the run since it started, as the changelog record's bytes while a run restored
after a rebalance has not been touched yet, or once the sweep holds it idle (no event for
``sweep.HOLD_IDLE_S``). Per run it also keeps an entry in Faust's key -> partition map, in
the sweep's due index (a dict entry and a slot in its bucket of a second) and in the batch
step's size map.
The process fixes glibc's malloc thresholds as `baton worker` does (processors/allocator.py;
an older tree without it, with glibc's dynamic ones, as its worker ran).
This bench builds N active runs with the real engine (a handoff and its completion each, or
three of each for long runs: owner, agents, task tree, dedup marks, the kept replies,
spend; decided by the worker's batch step, which links them into the run's chain), holds
them the way the worker does, and reports the growth of the process's RSS per run:

* ``decoded``: RunState objects + the worker's per-run index entries (a run an event, or the
  sweep, touched in the last ``sweep.HOLD_IDLE_S``);
* ``held``: the same runs as the sweep holds them idle (``RunStore.hold_encoded``: the record
  compressed, processors/state_held.py; an older tree's own way with --before-pythonpath);
* ``restored``: as the changelog record's bytes (after a rebalance, until the sweep reads it);
* ``tombstone``: what eviction keeps of a run (``BATON_TOMBSTONE_RETENTION_S``, 30 days);

then the CPU of the batch step for a held run's next event against a decoded run's, of a
hold, and of the worker's sweep step at that size (nothing due, 5,000 runs due, 5,000 idle
runs to hold), next to one walk over every run (what a sweep without its due index would do
each second) and the re-index after a rebalance.

    python -m bench.memory_bench                      # 100,000 and 1,000,000 runs
    python -m bench.memory_bench --runs 100000
    python -m bench.memory_bench --runs 1000000 --long-runs 0 --modes held
    python -m bench.memory_bench --before-pythonpath DIR   # DIR/baton: an older tree, same run
    python -m bench.memory_bench --runs 100000 --own-task-ids   # no two runs' task ids alike
    python -m bench.memory_bench --runs 100000 --record-keys    # a key object a record
    python -m bench.memory_bench --runs 100000 --long-runs 100000 --sites  # where bytes are
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from baton.processors import sweep
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.engine import NO_KILLS, evict
from baton.processors.faust_adapter import RunStore
from baton.processors.state import RunState
from baton.processors.sweep import DueIndex
from baton.processors.sweep_step import sweep_due
from baton.schemas.events import HandoffCompleted, HandoffRequested
from baton.schemas.policy import load_policy
from baton.streams.partitioner import partition_for

PARTITIONS = 8
REQUESTS = "gov.handoff.requests"
SWEEP_LIMIT = 5000  # processors/app.py _SWEEP_LIMIT


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _events(
    run_id: str, long: bool, now: datetime, own_tasks: bool = False
) -> list[tuple[float, bytes]]:
    """A run's events as the orchestrator sends them, each with its offset in seconds:
    a handoff and its completion; ``long``: three of each on a task tree two deep (the run
    then keeps RECENT_REPLIES keys' decisions, the most a run keeps). Every run names the
    same agents and, unless ``own_tasks``, the same task ids (runs then share their agent
    and task dicts, ``state.shared``); ``own_tasks``: task ids of the run's own."""
    t1, t2, t3 = (f"{run_id[-12:]}-task-{i}" if own_tasks else f"task-{i}" for i in (1, 2, 3))
    steps = [(t1, "planner", "coder", None)]
    if long:
        steps += [(t2, "coder", "tester", t1), (t3, "coder", "reviewer", t1)]
    out: list[tuple[float, bytes]] = []
    for i, (task, giver, taker, parent) in enumerate(steps):
        rid = f"{run_id}-r{i + 1}"
        t = now + timedelta(seconds=2 * i)
        handoff = HandoffRequested(
            request_id=rid, run_id=run_id, tenant="acme", task_id=task, parent_task_id=parent,
            from_agent=giver, to_agent=taker, action="code.write", estimated_usd=0.5,
            event_time=t,
        )  # fmt: skip
        done = HandoffCompleted(
            request_id=rid, run_id=run_id, tenant="acme", task_id=task, agent=taker,
            cost_usd=0.42, tool_calls=3, status="ok", event_time=t + timedelta(seconds=1),
        )  # fmt: skip
        out += [(2.0 * i, handoff.to_json()), (2.0 * i + 1, done.to_json())]
    return out


def measure(
    n: int,
    mode: str = "decoded",
    long: bool = False,
    own_tasks: bool = False,
    record_keys: bool = False,
    sites: bool = False,
) -> dict[str, Any]:
    """RSS growth per run holding ``n`` runs as ``mode`` says: ``decoded``, ``restored`` (the
    changelog record, as Faust's recovery leaves it), ``held`` (as the sweep holds an idle
    run) or ``tombstones`` (what eviction keeps); for ``decoded`` also the sweep's timings
    and what a held run's next event costs.

    The runs are decided by the worker's batch step (``BatchProcessor``: chain links, the
    worker's name and record positions on every kept decision, as a worker keeps them), in
    batches of about 2,000 records: one batch holds some runs' handoffs and the previous
    runs' completions, so each run is written twice, as on a worker. ``record_keys``: every
    record its own key bytes, as the consumer gives them (else a run's records share one).
    ``sites``: also where the second half's bytes were allocated (tracemalloc, which adds
    its own memory: the RSS figures of that process do not count).
    """
    policy = load_policy(None)
    now = datetime.now(UTC)
    ids = [f"run-{uuid.UUID(int=i + 1)}" for i in range(n)]
    gc.collect()
    half = base = rss_bytes()
    # what the worker holds per run: the table's store, Faust's key -> partition map, the
    # batch step's size map (proc._sizes), the sweep's due index
    store: dict[bytes, RunState | bytes] = {}
    key_partition: dict[bytes, int] = {}
    states = RunStore(
        SimpleNamespace(data=SimpleNamespace(data=store, _key_partition=key_partition)), PARTITIONS
    )
    # max_runs: the worker's own limit (500,000 by default) would stop the runs past it
    proc = BatchProcessor(
        policy, PARTITIONS, states, worker="w-1", chain_key=b"k" * 32, max_runs=n + 1
    )
    due = DueIndex(retention_s=3600.0, tombstone_retention_s=86_400.0)
    offsets = [0] * PARTITIONS
    chunk = 1000 if not long else 300
    cpu0 = time.process_time()
    pending: list[InputRecord] = []
    half_at = n // 2
    for start in range(0, n + chunk, chunk):
        if start >= half_at and half == base:
            gc.collect()
            half = rss_bytes()
            if sites:
                tracemalloc.start()
                before = tracemalloc.take_snapshot()
        records = pending
        #: runs whose last event is in this batch: held from now on as they will stay
        finishing = {r.key for r in records}
        pending = []
        for run_id in ids[start : start + chunk]:
            key = run_id.encode()
            partition = partition_for(key, PARTITIONS)
            for j, (_, raw) in enumerate(_events(run_id, long, now, own_tasks)):
                offsets[partition] += 1
                own = run_id.encode() if record_keys else key
                rec = InputRecord(REQUESTS, partition, offsets[partition], own, raw)
                # a run's first event in this batch, the rest in the next one
                (records if j == 0 else pending).append(rec)
        if not records:
            break
        out = proc.process(records, now)
        assert not out.dead_letters, out.dead_letters[:1]
        for key, (_partition, state) in out.changed.items():
            raw = out.encoded[key]
            if mode == "tombstones" and key in finishing:
                state = state.tombstone(now.timestamp())
                store[key] = state
            elif mode == "restored" and key in finishing:
                # a compact copy, as a restored record is (aiokafka's value): orjson's own
                # result keeps its whole growth buffer allocated (1.2 KB held 8 KB of RSS)
                store[key] = bytes(memoryview(raw))
            elif mode == "held" and key in finishing:
                # as the sweep does, with the tree's own RunStore: held as its touched entry
                # is taken (below), its due entry kept
                states.hold_encoded(key)
                due.push(key, due.due_of(state))
                continue
            due.touch(key, state)
        if mode == "held":  # the sweep pops every touched list (its answer unused)
            due.idle_keys(float("inf"), n, states.idle_since)
        del out
    build_cpu = time.process_time() - cpu0
    if mode == "restored":  # re-indexed: the due index forgets them as recently decided
        due.idle_keys(float("inf"), n, states.idle_since)
    stored_total = sum(
        len(v) if isinstance(v, bytes) else len(v.to_bytes()) for v in store.values()
    )
    gc.collect()
    full = rss_bytes()
    assert len(store) == n
    # the slope over the second half: the first runs also pay for one-off growth (the
    # collector's garbage high-water mark, dicts and the heap growing to their size class)
    per_run = (full - half) / (n - half_at)
    result = {
        "runs": n,
        "per_run": per_run,
        "stored_bytes_per_run": stored_total / n,
        "build_cpu_us_per_event": build_cpu * 1e6 / (n * len(_events("r", long, now))),
        # the spill file's bytes a run once built (page cache and disk, not RSS): what its
        # open segments hold, garbage included
        "spill_bytes_per_run": _spill_bytes() / n,
    }
    if sites:
        return {**result, **_sites(before, n - half_at)}
    if mode != "decoded":
        return result
    return {
        **result,
        **_sweep_times(proc, states, due, now),
        **_return_costs(proc, states, now),
        **_hold_sweep_and_reindex(proc, store, due, now),
    }


def _sites(before: tracemalloc.Snapshot, runs: int, top: int = 16) -> dict[str, Any]:
    """The bytes still held since ``before`` (the second half's runs) a run, in all
    (``sites_total``) and by allocation site (``sites``: [bytes a run, objects a run,
    file:line], the largest first)."""
    gc.collect()
    stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
    tracemalloc.stop()
    out = []
    for stat in stats[:top]:
        frame = stat.traceback[0]
        where = frame.filename.rsplit("site-packages/", 1)[-1]
        if where.startswith(_BATON):  # the measured tree's modules as baton/...
            where = "baton/" + where[len(_BATON) :]
        out.append([stat.size_diff / runs, stat.count_diff / runs, f"{where}:{frame.lineno}"])
    return {"sites": out, "sites_total": sum(stat.size_diff for stat in stats) / runs}


#: the folder of the measured baton package (its modules' sites are named from it)
_BATON = os.path.dirname(os.path.dirname(os.path.abspath(sweep.__file__))) + os.sep


def _sweep(proc: BatchProcessor, due: DueIndex, at: datetime) -> float:
    """One call of the worker's sweep step (every partition ready, no kills): its CPU seconds
    (the event loop waits that long on a host with a core free)."""
    every = set(range(PARTITIONS))
    t0 = time.process_time()
    sweep_due(
        proc, due, at, active=every, ready=every, kills=NO_KILLS, run_retention_s=3600.0,
        tombstone_retention_s=86_400.0, limit=SWEEP_LIMIT,
    )  # fmt: skip
    return time.process_time() - t0


def _sweep_times(
    proc: BatchProcessor, states: RunStore, due: DueIndex, now: datetime
) -> dict[str, float]:
    """The worker's sweep step at this size: nothing due, a full sweep's worth (5,000 runs)
    due, and one walk over every run (what a sweep without the due index would do)."""
    keys = list(states)
    now_ts = now.timestamp()
    idle_s = _sweep(proc, due, now)
    for key in keys[:SWEEP_LIMIT]:
        due.push(key, now_ts - 1)
    busy_s = _sweep(proc, due, now)
    t0 = time.perf_counter()
    walked = sum(1 for key in keys if evict(states[key], now, 3600.0, 86_400.0))
    walk_s = time.perf_counter() - t0
    assert walked == len(keys)
    return {
        "sweep_idle_ms": idle_s * 1000,
        "sweep_5000_ms": busy_s * 1000,
        "walk_ms": walk_s * 1000,
    }


def _hold_sweep_and_reindex(
    proc: BatchProcessor, store: dict[bytes, RunState | bytes], due: DueIndex, now: datetime
) -> dict[str, float]:
    """The sweep that holds a full sweep's worth of idle runs (HOLD_IDLE_S after their
    events), then the re-index after a rebalance (every run due once, none decoded)."""
    held_before = sum(1 for v in store.values() if isinstance(v, bytes))
    hold_s = _sweep(proc, due, now + timedelta(seconds=sweep.HOLD_IDLE_S + 1))
    held = sum(1 for v in store.values() if isinstance(v, bytes)) - held_before
    keys = list(store)
    t0 = time.perf_counter()
    due.rebuild_keys(keys, now.timestamp())
    rebuild_s = time.perf_counter() - t0
    return {"hold_sweep_ms": hold_s * 1000, "hold_sweep_runs": held, "rebuild_ms": rebuild_s * 1000}


def _next_handoffs(keys: list[bytes], now: datetime) -> list[InputRecord]:
    """One more handoff for each run (a new task under its first), as its next event."""
    out = []
    for i, key in enumerate(keys):
        run_id = key.decode()
        event = HandoffRequested(
            request_id=f"{run_id}-next", run_id=run_id, tenant="acme", task_id="task-9",
            parent_task_id="task-1", from_agent="coder", to_agent="tester",
            action="code.write", event_time=now + timedelta(seconds=10),
        )  # fmt: skip
        partition = partition_for(key, PARTITIONS)
        out.append(InputRecord(REQUESTS, partition, 10**9 + i, key, event.to_json()))
    return out


def _return_costs(proc: BatchProcessor, states: RunStore, now: datetime) -> dict[str, float]:
    """CPU of the batch step per event for runs held idle against runs kept decoded (four
    alternating sets of runs: held, decoded, held, decoded), and CPU per run to hold one (the
    sweep's ``RunStore.hold_encoded``: encode and compress)."""
    size = min(2_500, len(states) // 8)
    keys = list(states)[-4 * size :]
    sets = [keys[i * size : (i + 1) * size] for i in range(4)]
    cpu0 = time.process_time()
    for key in sets[0] + sets[2]:
        states.hold_encoded(key)
    hold_cpu = time.process_time() - cpu0
    spent = [0.0, 0.0]  # held, decoded
    for i, batch in enumerate(sets):
        records = _next_handoffs(batch, now)
        cpu0 = time.process_time()
        out = proc.process(records, now)
        spent[i % 2] += time.process_time() - cpu0
        assert not out.dead_letters and len(out.decisions) == len(batch), out.dead_letters[:1]
    return {
        "hold_us_per_run": hold_cpu * 1e6 / (2 * size),
        "next_event_held_us": spent[0] * 1e6 / (2 * size),
        "next_event_decoded_us": spent[1] * 1e6 / (2 * size),
    }


def _child(
    n: int,
    mode: str,
    long: bool,
    pythonpath: str | None,
    own_tasks: bool = False,
    record_keys: bool = False,
    sites: bool = False,
    no_spill: bool = False,
) -> dict[str, Any]:
    """One measure in a fresh process: freed memory is not given back to the OS, so a second
    measure in the same process would start from the first one's high-water mark."""
    cmd = [sys.executable, "-m", "bench.memory_bench", "--one", str(n), "--mode", mode]
    cmd += ["--long"] if long else []
    cmd += ["--own-task-ids"] if own_tasks else []
    cmd += ["--record-keys"] if record_keys else []
    cmd += ["--sites"] if sites else []
    cmd += ["--no-spill"] if no_spill else []
    if pythonpath is not None and not os.path.exists(
        os.path.join(pythonpath, "baton", "processors", "allocator.py")
    ):
        # an older tree's worker left glibc's thresholds alone (the import below would find
        # this checkout's module through its editable install)
        cmd += ["--glibc-default"]
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(cmd, check=True, capture_output=True, env=env)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument(
        "--long-runs",
        type=int,
        default=100_000,
        help="also this many long runs (three handoffs and completions each); 0: none",
    )
    ap.add_argument(
        "--modes",
        nargs="+",
        choices=_MODES,
        default=list(_MODES),
        help="what to measure (decoded always): decoded, held (idle, as the sweep holds "
        "it), restored (as Faust's recovery leaves it), tombstones",
    )
    ap.add_argument(
        "--before-pythonpath",
        help="a directory holding an older baton package (baton/ -> its tree): measured "
        "in the same run, alternating with this one",
    )
    ap.add_argument(
        "--own-task-ids",
        action="store_true",
        help="every run names task ids of its own (default: the same ids in every run, "
        "whose task dicts runs then share)",
    )
    ap.add_argument(
        "--record-keys",
        action="store_true",
        help="every record its own key bytes, as the consumer gives them (default: a run's "
        "records share one; the sweep's touched lists kept a batch's copy until session 8)",
    )
    ap.add_argument(
        "--no-spill",
        action="store_true",
        help="kept replies packed in memory (BATON_SPILL_REPLIES=0); default: spilled to a "
        "file in a temporary directory, as the worker does (processors/state_spill.py)",
    )
    ap.add_argument(
        "--sites",
        action="store_true",
        help="only where a decoded run's bytes are: tracemalloc's allocation sites of the "
        "second half's runs, each shape in its own process (no RSS or CPU figures)",
    )
    # a child measuring one size
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="decoded", help=argparse.SUPPRESS)
    ap.add_argument("--long", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--glibc-default", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.modes = ["decoded", *(m for m in args.modes if m != "decoded")]
    gc.set_threshold(100_000, 50, 100)  # as `baton worker` sets it
    if not args.glibc_default:
        _allocator_as_the_worker_sets_it()
    if args.one:
        with tempfile.TemporaryDirectory(prefix="memory-bench-spill-") as spill_dir:
            if not args.no_spill:
                _spill_as_the_worker_does(spill_dir)
            measured = measure(
                args.one, args.mode, args.long, args.own_task_ids, args.record_keys, args.sites
            )
            print(json.dumps(measured))
        return
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        "runs decided by the worker's batch step; short: a handoff and its completion, "
        "long: three of each\n"
    )
    if args.sites:
        _print_sites(args)
        return
    print(
        "| runs | run | code | RSS/run decoded | RSS/run held idle | RSS/run restored "
        "| changelog record | held record | RSS/tombstone | spill file/run |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    sides = [("this", None)]
    if args.before_pythonpath:
        sides.insert(0, ("before", args.before_pythonpath))
    shapes = [(n, False) for n in args.runs]
    if args.long_runs:
        shapes.append((args.long_runs, True))
    timings = []
    for n, long in shapes:
        for name, path in sides:
            m = {
                mode: _child(
                    n, mode, long, path, args.own_task_ids, args.record_keys, False, args.no_spill
                )
                for mode in args.modes
            }
            shape = ("long" if long else "short") + (", own task ids" if args.own_task_ids else "")
            shape += ", a key a record" if args.record_keys else ""
            shape += ", no spill" if args.no_spill else ""
            r = m["decoded"]
            print(
                f"| {n:,} | {shape} | {name} | {_b(m, 'decoded')} "
                f"| {_b(m, 'held')} | {_b(m, 'restored')} "
                f"| {r['stored_bytes_per_run']:,.0f} B | {_b(m, 'held', 'stored_bytes_per_run')} "
                f"| {_b(m, 'tombstones')} | {r.get('spill_bytes_per_run', 0):,.0f} B |",
                flush=True,
            )
            timings.append(
                f"| {n:,} | {shape} | {name} "
                f"| {r['build_cpu_us_per_event']:.1f} | {r['next_event_decoded_us']:.1f} "
                f"| {r['next_event_held_us']:.1f} | {r['hold_us_per_run']:.1f} "
                f"| {r['sweep_idle_ms']:.3f} ms | {r['sweep_5000_ms']:.1f} ms "
                f"| {r['hold_sweep_ms']:.1f} ms ({r['hold_sweep_runs']:,.0f}) "
                f"| {r['rebuild_ms']:,.0f} ms | {r['walk_ms']:,.0f} ms |"
            )
    print(
        "\nCPU (process time): µs per event or run; the sweep step's ms per call (wall clock for "
        "the re-index and the walk)\n\n"
        "| runs | run | code | batch step /event | next event, run decoded | next event, run "
        "held | hold /run | sweep, none due | sweep, 5,000 due | sweep holding idle runs (held) "
        "| re-index | walk every run |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(timings))


def _print_sites(args: argparse.Namespace) -> None:
    """Per shape, the allocation sites of a decoded run's bytes (``--sites``)."""
    shapes = [(n, False) for n in args.runs] + ([(args.long_runs, True)] if args.long_runs else [])
    for n, long in shapes:
        m = _child(
            n, "decoded", long, None, args.own_task_ids, args.record_keys, True, args.no_spill
        )
        shape = "long" if long else "short"
        print(f"{n:,} runs, {shape}: {m['sites_total']:,.0f} B a run held (tracemalloc)\n")
        print("| bytes a run | objects a run | allocated at |\n|---:|---:|---|")
        print("\n".join(f"| {b:,.1f} | {c:.2f} | {where} |" for b, c, where in m["sites"]))
        print(flush=True)


def _spill_as_the_worker_does(directory: str) -> None:
    """Kept replies spilled to a file under ``directory`` as `baton worker` configures it
    (processors/state_spill.py); an older tree without the module: packed in memory."""
    try:
        from baton.processors import state_spill
    except ImportError:
        return
    from baton.schemas.settings import Settings

    state_spill.configure(Path(directory), max_bytes=Settings().spill_max_bytes)


def _spill_bytes() -> int:
    """The bytes of the spill's open segments (0: no spill)."""
    try:
        from baton.processors import state_spill
    except ImportError:
        return 0
    spill = state_spill.active()
    return spill.open_bytes if spill is not None else 0


def _allocator_as_the_worker_sets_it() -> None:
    """glibc's thresholds as this tree's `baton worker` fixes them (processors/allocator.py);
    an older tree (``--before-pythonpath``) without the module: as its worker left them."""
    try:
        from baton.processors.allocator import keep_heap_compact
    except ImportError:
        return
    keep_heap_compact()


#: each measured in its own process
_MODES = ("decoded", "held", "restored", "tombstones")


def _b(measured: dict[str, dict[str, float]], mode: str, key: str = "per_run") -> str:
    return f"{measured[mode][key]:,.0f} B" if mode in measured else "-"


if __name__ == "__main__":
    main()
