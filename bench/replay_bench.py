"""Recorded decisions per second of `baton replay`, reading included, against its parts.

Records engine_bench's realistic mix (default 30,000 events over 4,000 runs) through the
worker's batch step (inputs attached, chains linked), stores what it publishes in a fresh chDB
audit through the sink's own insert path, then measures on that audit, best of three:

* read: the pages of every row a replay reads, decoded to rows (``read_pages``, ``page_rows``);
* chain order: each run's rows checked against their hash chain (``in_chain_order``), as
  read (in order: what every replay pays) and read backwards (each run reordered: what a
  worker clock stepping back costs the runs it touched);
* replay, other policy: reading + deciding every step twice (a stricter ``max_handoffs``, and
  the recorded policy as proof) - what `baton replay --policy stricter.yaml --jobs 1` does
  (``cli.replay_cmds.replay_audit``, the command's own path);
* replay, one limit changed: docs/replay.md's stricter.yaml (the seed with ``max_handoffs``
  4): the proof's decide answers for the new policy until a run's first step the changed
  limit could decide otherwise (processors/replay_share.py), then both decide;
* replay, tenant-only change: the new policy differs for another tenant only, so each run is
  decided once (the two replays are one while the rules are equal);
* replay with ``--jobs`` processes (the reading process replays pieces of runs and hands
  others, as bytes, to a pool of jobs - 1; the pool starts while the first pieces are
  replayed in the reading process);
* replay in memory: the rows read before, one process (the replay's own cost, no reading);
* decide once: the engine alone on the same steps (the floor of one pass, no reading);
* `baton replay --jobs 1` and ``--jobs N`` themselves, each a fresh process on the same audit
  (this process closes it first: chDB opens a directory in one process at a time), the rate
  from the seconds the command prints (from opening the audit, ~0.3 s of chDB's start, to
  its report; not the interpreter's start): the command's ``--jobs`` pool is forked before
  the audit opens, where the row above starts a forkserver (this process runs chDB's
  threads). Their CPU column is the command's processes together, the interpreter's start
  and imports included.

CPU seconds are this process's (user + system, chDB's threads included; not the pool's).

``--events`` sets the history's size (runs: one per 7.5 events unless ``--runs`` is given):
the 50k/s target is for replays of an hour or a day of traffic, where a pool's start is paid
once; the default 30,000 is the small-history figure, never to be hidden. ``--against DIR``
runs the whole bench (recording included) alternately with this tree and with DIR (a folder
holding a ``baton`` package, e.g. a worktree of the start commit's cli, processors, schemas,
sinks and streams symlinked under DIR/baton) on PYTHONPATH, ``--rounds`` times each, and
prints the rates side by side (the host's load moves more than a change: same run, alternating).

    python -m bench.replay_bench [--events 30000] [--runs 4000] [--jobs 2]
    python -m bench.replay_bench --events 120000 --against /tmp/start --rounds 2
    python -m bench.replay_bench --events 480000 --audit /tmp/big480   # built once, kept

``--audit DIR`` keeps the audit it builds in DIR (``DIR/chdb``, and the policy file the
command replays under, ``DIR/stricter.yaml``) and reuses one found there: a big history is
recorded once, and the sides of ``--against`` read the same rows.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from baton.cli.replay_cmds import replay_audit
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.compiled import core_build
from baton.processors.engine import decide
from baton.processors.recorded import policy_in_force
from baton.processors.replay import Recorded, in_chain_order, replay_runs, runs_of
from baton.schemas.decision import Decision
from baton.schemas.events import parse_event
from baton.schemas.policy import DEFAULT_POLICY_YAML, Policy, load_policy, parse_policy
from baton.sinks.audit_batch import AuditBatch, write_batch
from baton.sinks.clickhouse import connect
from baton.sinks.replay_source import (
    ReplayScope,
    page_rows,
    read_pages,
    read_policies,
    read_runs_rows,
)
from baton.sinks.schema import migrate
from baton.streams.partitioner import partition_for
from bench.engine_bench import build_workload

PARTITIONS = 8
APPROVALS = "gov.approvals"
KEY = b"bench-chain-key"


def record(runs: int, events: int, policy: Policy) -> list[Decision]:
    """What the worker publishes for the workload, re-emissions left out (the sink drops them)."""
    proc = BatchProcessor(
        policy, PARTITIONS, {}, worker="bench", approvals_topic=APPROVALS, chain_key=KEY
    )
    start = datetime.now(UTC) - timedelta(hours=1)
    published: list[Decision] = [policy_in_force(policy, start, "bench")]
    workload = build_workload(runs, positions="global")[:events]  # grants as asked
    for b in range(0, len(workload), 1000):
        recs = []
        for i, (run, ev, _) in enumerate(workload[b : b + 1000], b):
            key = run.encode()
            topic = APPROVALS if ev.type.startswith("approval") else "gov.handoff.requests"
            recs.append(InputRecord(topic, partition_for(key, PARTITIONS), i, key, ev.to_json()))
        out = proc.process(recs, start + timedelta(milliseconds=b))
        published += [d for _, d in out.decisions if not d.reemitted]
    return published


def store(chdb: Path, decisions: list[Decision]) -> None:
    client = connect(f"chdb://{chdb}", create=True)
    try:
        migrate(client, 30)
        for b in range(0, len(decisions), 10_000):
            batch = AuditBatch("gov.decisions", ttl_days=30)
            for i, d in enumerate(decisions[b : b + 10_000], b):
                batch.add(0, i, d.to_json())
            assert not batch.rejected, batch.rejected[:1]
            write_batch(client, batch)
    finally:
        client.close()


def best(fn: Callable[[], int], passes: int = 3) -> tuple[float, float, int]:
    """(seconds of the fastest pass, its CPU seconds in this process, what it counted)."""
    fastest, cpu, counted = float("inf"), 0.0, 0
    for _ in range(passes):
        t0, c0 = time.perf_counter(), time.process_time()
        counted = fn()
        took = time.perf_counter() - t0
        if took < fastest:
            fastest, cpu = took, time.process_time() - c0
    return fastest, cpu, counted


def command(chdb: Path, policy: Path, jobs: int, passes: int = 3) -> tuple[float, float, int]:
    """`baton replay` itself on the audit, best of ``passes``: (the seconds it prints, from
    opening the audit to the report; the CPU seconds of its processes, the pool's included
    when it forks them, interpreter start and imports too; the decisions it replayed)."""
    argv = [sys.executable, "-c", "from baton.cli.main import main; main()", "replay"]
    argv += ["--policy", str(policy), "--dsn", f"chdb://{chdb}", "--jobs", str(jobs)]
    env = {**os.environ, "BATON_AUDIT_CHAIN_KEY": KEY.decode()}
    fastest, cpu, counted = float("inf"), 0.0, 0
    for _ in range(passes):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([*argv, "--format", "json"], env=env, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode not in (0, 1):
            raise SystemExit(f"baton replay exited {out.returncode}: {out.stderr[-2000:]!r}")
        report = orjson.loads(out.stdout)
        assert report["faithful"] and not report["partial"], report["partial"]
        if report["seconds"] < fastest:
            fastest, counted = report["seconds"], report["decisions"]
            cpu = sum(getattr(after, f) - getattr(before, f) for f in ("ru_utime", "ru_stime"))
    return fastest, cpu, counted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=None, help="default: one per 7.5 events")
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--audit",
        default=None,
        help="a folder for the audit: built there and kept if it holds none, else reused "
        "(its recorded history as built, whatever --events says)",
    )
    ap.add_argument("--against", default=None, help="a folder holding another `baton` package")
    ap.add_argument("--rounds", type=int, default=2, help="with --against: runs of each side")
    ap.add_argument(
        "--this", default=None, help="with --against: a folder holding this side's `baton`"
    )
    ap.add_argument(
        "--pythonpath",
        default=None,
        help="a folder holding the `baton` to measure, e.g. a compiled build "
        "(BATON_COMPILE=1 pip install --no-deps --target DIR .): the bench runs with it first "
        "on PYTHONPATH",
    )
    args = ap.parse_args()
    if args.pythonpath is not None:
        _rerun_with(args.pythonpath)
        return
    if args.runs is None:
        args.runs = max(args.events * 2 // 15, 1)
    if args.against is not None:
        alternate(args)
        return
    measure(args)


def measure(args: argparse.Namespace) -> None:
    """The bench in this process: record, store, measure, print the table."""
    gc.set_threshold(100_000, 50, 100)  # as the worker runs (bench/RESULTS.md)
    recorded = load_policy(None)
    stricter = parse_policy("multi_agent:\n  max_handoffs: 3\n", "stricter")
    one_limit = parse_policy(
        DEFAULT_POLICY_YAML.replace("max_handoffs: 8", "max_handoffs: 4"), "stricter.yaml"
    )
    other_tenant = parse_policy(
        DEFAULT_POLICY_YAML + "\ntenants:\n  nobody_here:\n    max_handoffs: 1\n", "tenant-only"
    )
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.audit) if args.audit is not None else Path(scratch)
        chdb = tmp / "chdb"
        if not chdb.exists():
            tmp.mkdir(parents=True, exist_ok=True)
            store(chdb, record(args.runs, args.events, recorded))
        client = connect(f"chdb://{chdb}")
        try:
            policies, _ = read_policies(client)
            rows = list(read_runs_rows(client, ReplayScope()))

            def read() -> int:
                pages = read_pages(client, ReplayScope()).pages
                return sum(1 for page in pages for _ in page_rows(page))

            def replay(policy: Policy, jobs: int = 1) -> Callable[[], int]:
                def run() -> int:
                    report = replay_audit(client, ReplayScope(), policy, policies, KEY, jobs)
                    assert not report.unfaithful_runs and not report.partial
                    return report.decisions

                return run

            def in_memory() -> int:
                report = replay_runs(runs_of(rows), stricter, policies, KEY)
                assert not report.unfaithful_runs and not report.partial
                return report.decisions

            runs = list(runs_of(rows))
            #: every run read backwards: its chain disagrees, so each is reordered (the slow
            #: path a worker clock stepping back sends a run down)
            backwards = [run[::-1] for run in runs]

            def chain_order(read: list[list[Recorded]]) -> Callable[[], int]:
                def check() -> int:
                    done = 0
                    for run in read:
                        ordered, broken = in_chain_order(run)
                        assert broken is None
                        done += len(ordered)
                    return done

                return check

            def decide_once() -> int:
                states: dict[str, object] = {}
                for row in rows:
                    if row[10] is None:
                        continue
                    ev = parse_event(row[10].encode())
                    states[row[0]], _ = decide(states.get(row[0]), ev, recorded, row[6])  # type: ignore[arg-type]
                return len(rows)

            results = [
                ("read the recorded decisions", best(read)),
                ("chain order: each run as read, in order (the check)", best(chain_order(runs))),
                ("chain order: each run read backwards (reordered)", best(chain_order(backwards))),
                (
                    "replay, other policy (2 decides/step from its first change)",
                    best(replay(stricter)),
                ),
                ("replay, one limit changed (max_handoffs 8 -> 4)", best(replay(one_limit))),
                ("replay, tenant-only change (1 decide)", best(replay(other_tenant))),
                (
                    f"replay, other policy, --jobs {args.jobs}",
                    best(replay(stricter, args.jobs)),
                ),
                ("replay, other policy, in memory (no reading)", best(in_memory)),
                ("decide once, no reading (engine floor)", best(decide_once)),
            ]
        finally:
            client.close()
        policy_file = tmp / "stricter.yaml"
        policy_file.write_text("multi_agent:\n  max_handoffs: 3\n")
        for jobs in (1, args.jobs):
            name = f"`baton replay --jobs {jobs}`, other policy (the seconds it prints)"
            results.append((name, command(chdb, policy_file, jobs)))
    print(
        f"# replay_bench: {len(rows):,} recorded decisions ({args.events:,} events, "
        f"{args.runs:,} runs); {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{core_build()} core"
    )
    print("| step | seconds | CPU s (this process) | recorded decisions/s |")
    print("|---|---|---|---|")
    for name, (seconds, cpu, counted) in results:
        print(f"| {name} | {seconds:.2f} | {cpu:.2f} | {counted / seconds:,.0f} |")


_ROW = re.compile(r"^\| (.+?) \| ([\d.]+) \| ([\d.]+) \| ([\d,]+) \|$")


def alternate(args: argparse.Namespace) -> None:
    """The bench run ``args.rounds`` times with this tree and with ``args.against`` in turn,
    each in its own process; their rates side by side."""
    here = str(Path(__file__).resolve().parents[1])
    this = f"{Path(args.this).resolve()}{os.pathsep}{here}" if args.this else here
    sides = {"this": this, "against": f"{Path(args.against).resolve()}{os.pathsep}{here}"}
    argv = [sys.executable, "-m", "bench.replay_bench", "--events", str(args.events)]
    argv += ["--runs", str(args.runs), "--jobs", str(args.jobs)]
    if args.audit is not None:
        argv += ["--audit", args.audit]
    columns: list[str] = []
    rates: dict[str, list[str]] = {}
    #: CPU microseconds a recorded decision (the bench's process; the command's processes):
    #: steadier than rates on a loaded host, where a pass waits for a core
    cpu: dict[str, list[str]] = {}
    for n in range(1, args.rounds + 1):
        for side, path in sides.items():
            env = {**os.environ, "PYTHONPATH": path}
            out = subprocess.run(argv, env=env, cwd=here, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the bench with {side} ({path}) failed:\n{out.stderr[-2000:]}")
            lines = out.stdout.splitlines()
            columns.append(f"{side} {n} (load {_load(lines[0])})")
            for line in lines:
                m = _ROW.match(line)
                if m:
                    name, seconds, cpu_s, rate = m.groups()
                    rates.setdefault(name, []).append(rate)
                    decisions = float(rate.replace(",", "")) * float(seconds)
                    shown = f"{float(cpu_s) / decisions * 1e6:.1f}" if decisions else "-"
                    cpu.setdefault(name, []).append(shown)
            print(f"# {side} round {n}: {lines[0]}", flush=True)
    print(f"# this = {args.this or 'the baton package on PYTHONPATH'}, against = {args.against}")
    print("| step: recorded decisions/s | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in rates.items():
        print(f"| {name} | " + " | ".join(row) + " |")
    print("\n| step: CPU us a recorded decision | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in cpu.items():
        print(f"| {name} | " + " | ".join(row) + " |")


def _rerun_with(folder: str) -> None:
    """This bench again, in a process with ``folder`` first on PYTHONPATH (the `baton replay`
    it starts inherits it); exits with its status."""
    here = str(Path(__file__).resolve().parents[1])
    argv, rest = [], iter(sys.argv[1:])
    for arg in rest:
        if arg == "--pythonpath":
            next(rest, None)
        elif not arg.startswith("--pythonpath="):
            argv.append(arg)
    env = {**os.environ, "PYTHONPATH": f"{Path(folder).resolve()}{os.pathsep}{here}"}
    raise SystemExit(
        subprocess.run([sys.executable, "-m", "bench.replay_bench", *argv], env=env).returncode
    )


def _load(header: str) -> str:
    m = re.search(r"load ([\d.]+)", header)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    main()
