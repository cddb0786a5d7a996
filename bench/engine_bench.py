"""Decisions per second of the pure engine on one core, on a realistic mix of run events.

The mix: many runs (default 4,000) interleaved the way one partition sees them; each run a
task tree two to three levels deep (orchestrator -> planner -> specialists -> helpers);
about a third of the events are completions; some runs ask for a refund that needs an
approval (and get a grant), some hand an owned task to another agent (ownership conflict),
some blow the handoff budget, and a few events are redelivered. Events are built before
the clock starts; run state lives in a dict, like the worker's ``runs`` table.

Also measured, because the worker writes every changed run state to the changelog:
``RunState.to_bytes`` and ``from_bytes`` per event.

    python bench/engine_bench.py                 # the table
    python bench/engine_bench.py --profile       # cProfile of the decide loop, top 25

Before and after a change, in the same run (a git worktree of the commit before it):

    git worktree add --detach /tmp/baton-before COMMIT
    python -m bench.engine_bench --before-worktree /tmp/baton-before --rounds 3

runs this file's decide measure in fresh processes, alternating the worktree's ``baton`` and
this checkout's, and prints wall and CPU time per decision of each (CPU time is steadier on
a shared machine). Run it from the repository root.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from baton.processors.engine import approval_id_for, decide
from baton.processors.state import RunState
from baton.schemas.events import (
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    RunEvent,
    RunFinished,
)
from baton.schemas.policy import Policy, load_policy
from baton.streams.partitioner import partition_for

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SPECIALISTS = ["billing_agent", "search_agent", "support_agent", "writer_agent", "shipping_agent"]


def _run_script(rng: random.Random, run_id: str) -> list[RunEvent]:
    """The events of one run, in the order its orchestrator would publish them."""
    at = T0 + timedelta(seconds=rng.randint(0, 3600))
    out: list[RunEvent] = []
    n = 0

    def req(task: str, parent: str | None, giver: str, taker: str, **kw: object) -> str:
        nonlocal n
        n += 1
        rid = f"{run_id}/h{n}"
        out.append(
            HandoffRequested(
                request_id=rid,
                run_id=run_id,
                task_id=task,
                parent_task_id=parent,
                from_agent=giver,
                to_agent=taker,
                event_time=at,
                **kw,  # type: ignore[arg-type]
            )
        )
        return rid

    def done(rid: str, task: str, agent: str) -> None:
        out.append(
            HandoffCompleted(
                request_id=rid,
                run_id=run_id,
                task_id=task,
                agent=agent,
                cost_usd=round(rng.uniform(0.01, 2.5), 4),
                tool_calls=rng.randint(0, 9),
                status="ok" if rng.random() > 0.05 else "error",
                event_time=at,
            )
        )

    root = req("plan", None, "orchestrator", "planner", estimated_usd=3.0)
    agents = rng.sample(SPECIALISTS, 2)
    refund = rng.random() < 0.08  # this run will need an approval for a refund
    if refund and "billing_agent" not in agents:
        agents[0] = "billing_agent"  # the refund goes to an agent already in the run
    fanout = rng.choice([2, 3, 3, 4, 6])  # 6 children + helpers run past max_handoffs
    for i in range(fanout):
        agent = agents[i % 2]
        task = f"step{i}"
        rid = req(task, "plan", "planner", agent, tool="search.web" if i % 2 else None)
        if rng.random() < 0.5:  # a third level under some specialists
            sub = req(f"{task}.lookup", task, agent, "planner")
            if rng.random() < 0.6:
                done(sub, f"{task}.lookup", "planner")
        if rng.random() < 0.6:
            done(rid, task, agent)
    if refund:  # a refund that needs an approval, then a grant
        rid = req("refund", "plan", "planner", "billing_agent", action="billing.refund.create")
        out.append(
            ApprovalGranted(approval_id=approval_id_for(out[-1]), run_id=run_id,  # type: ignore[arg-type]
                            approver="finance_lead", event_time=at)
        )  # fmt: skip
    if rng.random() < 0.06:  # the planner hands an owned task to another agent
        req("step0", "plan", "planner", "support_agent")
    done(root, "plan", "planner")
    if rng.random() < 0.03:  # a redelivery of some earlier event
        out.append(rng.choice(out))
    if rng.random() < 0.5:
        out.append(RunFinished(run_id=run_id, event_time=at))
    return out


#: how the events of build_workload are read, for the approval ids its grants name: None,
#: by a pure ``decide`` without an input position (ids unmarked); "global": by the batch step,
#: event i read at offset i of its run's partition (replay_bench, batch_bench); "topic": by a
#: worker from fresh topics the workload was produced to in order (worker_bench: a topic
#: partition's offsets count its own records from 0)
POSITIONS = (None, "global", "topic")


def build_workload(
    runs: int, seed: int = 7, positions: str | None = None, partitions: int = 8
) -> list[tuple[str, RunEvent, datetime]]:
    """Every run's events, interleaved at random but in order within a run (one partition).

    A grant names the approval id its refund is asked under when the events are read as
    ``positions`` says (see POSITIONS; ``partitions``: the topics' partition count): the
    batch step marks an approval id with the run's life, where its first event was read
    (decision_builder.approval_mark), so an unmarked id would be ``unknown_approval``."""
    rng = random.Random(seed)
    scripts = [_run_script(rng, f"run-{i:05d}") for i in range(runs)]
    cursors = [0] * runs
    live = list(range(runs))
    out = []
    now = T0
    while live:
        k = rng.randrange(len(live))
        i = live[k]
        event = scripts[i][cursors[i]]
        cursors[i] += 1
        if cursors[i] == len(scripts[i]):
            live[k] = live[-1]
            live.pop()
        now += timedelta(microseconds=500)
        out.append((event.run_id, event, now))
    if positions is None:
        return out
    if positions not in POSITIONS:
        raise ValueError(f"positions: expected one of {POSITIONS}, got {positions!r}")
    return _grants_marked(out, _lives(out, positions, partitions))


def _lives(
    workload: list[tuple[str, RunEvent, datetime]], positions: str, partitions: int
) -> dict[str, str]:
    """run id -> its life mark (decision_builder.life_of): where its first event is read."""
    lives: dict[str, str] = {}
    counts: Counter[tuple[bool, int]] = Counter()
    for i, (run_id, event, _) in enumerate(workload):
        partition = partition_for(run_id.encode(), partitions)
        approval = type(event) is ApprovalGranted
        offset = i if positions == "global" else counts[approval, partition]
        counts[approval, partition] += 1
        if run_id not in lives:
            lives[run_id] = f"{'a' if approval else 'r'}{partition}:{offset}"
    return lives


def _grants_marked(
    workload: list[tuple[str, RunEvent, datetime]], lives: dict[str, str]
) -> list[tuple[str, RunEvent, datetime]]:
    """``workload`` with each grant naming its refund's approval id in the run's life."""
    refunds: dict[str, HandoffRequested] = {}
    out = []
    for run_id, event, now in workload:
        if type(event) is HandoffRequested and event.action == "billing.refund.create":
            refunds[run_id] = event
        elif type(event) is ApprovalGranted:
            marked = approval_id_for(refunds[run_id], lives[run_id])
            event = event.model_copy(update={"approval_id": marked})
        out.append((run_id, event, now))
    return out


def build_long_workload(runs: int, per_run: int) -> list[tuple[str, RunEvent, datetime]]:
    """Long runs (``per_run`` events each, past the 512-key dedup window): a handoff and its
    completion, over and over, the runs taking turns. Decided under a policy without limits."""
    out: list[tuple[str, RunEvent, datetime]] = []
    for i in range(per_run // 2):
        now = T0 + timedelta(seconds=i)
        for r in range(runs):
            run_id, task = f"long-{r:04d}", f"t{i}"
            rid = f"{run_id}/h{i}"
            ask = HandoffRequested(
                request_id=rid, run_id=run_id, task_id=task, from_agent="planner",
                to_agent="worker", event_time=now,
            )  # fmt: skip
            done = HandoffCompleted(
                request_id=rid, run_id=run_id, task_id=task, agent="worker", cost_usd=0.01,
                tool_calls=1, event_time=now,
            )  # fmt: skip
            out += [(run_id, ask, now), (run_id, done, now)]
    return out


def decide_all(
    workload: list[tuple[str, RunEvent, datetime]], policy: Policy
) -> tuple[int, dict[str, RunState]]:
    table: dict[str, RunState] = {}
    get = table.get
    decisions = 0
    for run_id, event, now in workload:
        state, out = decide(get(run_id), event, policy, now)
        table[run_id] = state
        decisions += len(out)
    return decisions, table


def serialize_all(
    workload: list[tuple[str, RunEvent, datetime]], policy: Policy
) -> tuple[float, float, int]:
    """Seconds spent in to_bytes and in from_bytes when every event's new state is written
    (the worker's worst case: one changelog record per event), and the bytes written."""
    table: dict[str, RunState] = {}
    raw: dict[str, bytes] = {}
    t_dump = t_load = 0.0
    written = 0
    clock = time.perf_counter
    for run_id, event, now in workload:
        previous = raw.get(run_id)
        t = clock()
        state = RunState.from_bytes(previous) if previous is not None else None
        t_load += clock() - t
        state, _ = decide(state, event, policy, now)
        t = clock()
        data = state.to_bytes()
        t_dump += clock() - t
        raw[run_id] = data
        table[run_id] = state
        written += len(data)
    return t_dump, t_load, written


def measure_decide(runs: int, repeat: int) -> dict[str, float]:
    """Decisions of one pass and its best wall and CPU seconds, after a warm-up, with GC as
    the worker runs it."""
    policy = load_policy(None)
    workload = build_workload(runs)
    decide_all(workload, policy)  # warm-up: caches, the policy version hash
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    wall = cpu = float("inf")
    decisions = 0
    for _ in range(repeat):
        gc.collect()
        t, c = time.perf_counter(), time.process_time()
        decisions, _ = decide_all(workload, policy)
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return {"decisions": decisions, "wall_s": wall, "cpu_s": cpu}


#: the folders that install as baton.* (pyproject.toml's package-dir)
_PACKAGES = ("cli", "processors", "schemas", "sinks", "streams")


def _baton_path(tree: Path, into: Path) -> Path:
    """A directory holding ``baton`` made of ``tree``'s folders (symlinks): on PYTHONPATH it
    imports that tree's code instead of the installed checkout's."""
    (into / "baton").mkdir(parents=True)
    for name in _PACKAGES:
        (into / "baton" / name).symlink_to(tree.resolve() / name)
    return into


def compare(before: Path, rounds: int, runs: int, repeat: int) -> None:
    """This file's decide measure under ``before``'s baton and this checkout's, alternating."""
    here = Path(__file__).resolve().parent.parent
    if not (before / "processors" / "engine.py").is_file():
        raise SystemExit(f"--before-worktree {before}: no processors/engine.py there")
    rows: list[tuple[int, str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            "before": _baton_path(before, Path(tmp, "before")),
            "after": _baton_path(here, Path(tmp, "after")),
        }
        for i in range(1, rounds + 1):
            for label, path in paths.items():
                env = {**os.environ, "PYTHONPATH": str(path)}
                cmd = [sys.executable, "-m", "bench.engine_bench", "--json",
                       "--runs", str(runs), "--repeat", str(repeat)]  # fmt: skip
                out = subprocess.run(cmd, env=env, cwd=here, check=True, capture_output=True)
                rows.append((i, label, json.loads(out.stdout.splitlines()[-1])))
    engines = {label: m["engine"] for _, label, m in rows}
    print(f"before: {engines['before']}\nafter:  {engines['after']}")
    print(f"{runs} runs, best of {repeat} per process, {rounds} alternations")
    print(f"| {'round':>5} | {'baton':<6} | {'decisions':>9} | {'wall dec/s':>10} | "
          f"{'CPU dec/s':>10} | {'CPU us/dec':>10} |")  # fmt: skip
    print(f"|{'-' * 7}|{'-' * 8}|{'-' * 11}|{'-' * 12}|{'-' * 12}|{'-' * 12}|")
    for i, label, m in rows:
        n = m["decisions"]
        print(f"| {i:>5} | {label:<6} | {n:>9.0f} | {n / m['wall_s']:>10,.0f} | "
              f"{n / m['cpu_s']:>10,.0f} | {m['cpu_s'] / n * 1e6:>10.2f} |")  # fmt: skip
    cpu = {k: statistics.median(m["cpu_s"] for _, lab, m in rows if lab == k) for k in paths}
    print(f"\nmedian CPU time per pass: after / before = {cpu['after'] / cpu['before']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--long-runs", type=int, default=200, help="runs of the long-run measure (0: skip it)"
    )
    parser.add_argument("--long-events", type=int, default=1000, help="events per long run")
    parser.add_argument(
        "--before-worktree",
        type=Path,
        help="a checkout of the commit to compare with: alternate its baton and this one's",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternations (--before-worktree)")
    parser.add_argument("--json", action="store_true", help="print the decide measure as JSON")
    args = parser.parse_args()
    if args.before_worktree is not None:
        compare(args.before_worktree, args.rounds, args.runs, args.repeat)
        return
    if args.json:
        engine = str(Path(sys.modules[decide.__module__].__file__ or "").resolve())
        print(json.dumps({**measure_decide(args.runs, args.repeat), "engine": engine}))
        return

    policy = load_policy(None)  # the seed policy
    t = time.perf_counter()
    workload = build_workload(args.runs)
    build_s = time.perf_counter() - t
    events = len(workload)
    kinds = Counter(type(e).__name__ for _, e, _ in workload)

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        decide_all(workload, policy)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return

    decide_all(workload, policy)  # warm-up: caches, the policy version hash
    # GC as the worker runs it (cli/stack.py): start-up objects frozen, thresholds raised.
    # The pre-built events are frozen with them: they are the benchmark's, not the worker's
    # (run states and decisions made while timing are still collected)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    times = []
    decisions = 0
    outcomes: Counter[str] = Counter()
    for _ in range(args.repeat):
        gc.collect()
        t = time.perf_counter()
        decisions, table = decide_all(workload, policy)
        times.append(time.perf_counter() - t)
    for state in table.values():
        for key in state.recent_keys():
            outcomes.update(f"{d.phase}/{d.outcome}" for d in state.replies(key) or ())
    best, median = min(times), statistics.median(times)
    t_dump, t_load, written = serialize_all(workload, policy)
    long_row = None
    if args.long_runs:
        long_workload = build_long_workload(args.long_runs, args.long_events)
        no_limits = Policy.model_validate({"multi_agent": {}})
        long_times = []
        for _ in range(2):
            gc.collect()
            t = time.perf_counter()
            long_decisions, _ = decide_all(long_workload, no_limits)
            long_times.append(time.perf_counter() - t)
        long_row = (len(long_workload), long_decisions, min(long_times))

    print(f"python {platform.python_version()} on {platform.machine()}, one core; "
          f"{args.runs} runs, workload built in {build_s:.2f} s (not timed)")  # fmt: skip
    print(f"events: {dict(kinds)}")
    print(f"kept replies by phase/outcome: {dict(sorted(outcomes.items()))}")
    print()
    print(f"| {'measure':<38} | {'events':>7} | {'decisions':>9} | {'seconds':>7} | {'per s':>9} |")
    print(f"|{'-' * 40}|{'-' * 9}|{'-' * 11}|{'-' * 9}|{'-' * 11}|")
    for label, secs in ((f"decide, best of {args.repeat}", best), ("decide, median", median)):
        print(f"| {label:<38} | {events:>7} | {decisions:>9} | {secs:>7.3f} | "
              f"{decisions / secs:>9,.0f} |")  # fmt: skip
    if long_row:
        n, d, secs = long_row
        label = f"decide, {args.long_runs} runs x {args.long_events} events"
        print(f"| {label:<38} | {n:>7} | {d:>9} | {secs:>7.3f} | {d / secs:>9,.0f} |")
    print(f"| {'RunState.to_bytes (every event)':<38} | {events:>7} | {'':>9} | {t_dump:>7.3f} | "
          f"{events / t_dump:>9,.0f} |")  # fmt: skip
    print(f"| {'RunState.from_bytes (every event)':<38} | {events:>7} | {'':>9} | {t_load:>7.3f} | "
          f"{events / t_load:>9,.0f} |")  # fmt: skip
    print()
    print(f"decide: {best / decisions * 1e6:.2f} us/decision; to_bytes {t_dump / events * 1e6:.2f} "
          f"us/event, from_bytes {t_load / events * 1e6:.2f} us/event; "
          f"mean state {written / events:,.0f} bytes")  # fmt: skip


if __name__ == "__main__":
    main()
