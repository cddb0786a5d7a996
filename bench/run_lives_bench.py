"""What marking a run's life in its decision ids costs: CPU per decide() and bytes per run.

The same runs (handoffs and their reports, each run a new life) decided with the life mark
(``decide(..., origin)``: the worker's ids) and without it (``life=""``: the ids of a run
begun before lives were marked), alternating in one process with the collector off, the
median of the rounds; then the memory and state bytes one run's life mark takes.

    python -m bench.run_lives_bench            # the table (run from the repository root)
    python -m bench.run_lives_bench --rounds 9 --runs 800
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from baton.processors.engine import Origin, decide
from baton.processors.state import RunState
from baton.schemas.events import HandoffCompleted, HandoffRequested, RunEvent
from baton.schemas.policy import load_policy

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _runs(count: int, steps: int) -> list[list[RunEvent]]:
    out: list[list[RunEvent]] = []
    for r in range(count):
        run: list[RunEvent] = []
        for i in range(steps // 2):
            common = {"request_id": f"h{i}", "run_id": f"run-{r}", "task_id": f"t{i}"}
            run.append(
                HandoffRequested(
                    **common, from_agent="planner", to_agent="researcher", event_time=T0
                )
            )
            run.append(HandoffCompleted(**common, agent="researcher", cost_usd=0.01, event_time=T0))
        out.append(run)
    return out


def _cpu_per_decide(runs: list[list[RunEvent]], marked: bool) -> float:
    """CPU µs per decide() over ``runs``, each run from no state (a new life)."""
    policy = load_policy(None)
    life = None if marked else ""
    n = 0
    start = time.process_time()
    for r, events in enumerate(runs):
        state = None
        for i, event in enumerate(events):
            origin = Origin("w", 0, r * 1000 + i)
            state, _ = decide(
                state, event, policy, T0 + timedelta(seconds=i), origin=origin, life=life
            )
            n += 1
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--steps", type=int, default=10, help="events per run")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    runs = _runs(args.runs, args.steps)
    gc.disable()
    _cpu_per_decide(runs, True), _cpu_per_decide(runs, False)  # warm
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for marked in (False, True):
            times[marked].append(_cpu_per_decide(runs, marked))
    gc.enable()
    plain, marked = statistics.median(times[False]), statistics.median(times[True])
    policy = load_policy(None)
    state, _ = decide(None, runs[0][0], policy, T0, origin=Origin("w", 3, 1_234_567))
    print(f"{args.runs} runs x {args.steps} events, median of {args.rounds} alternating rounds")
    print("| ids | CPU µs per decide |")
    print("|---|---|")
    print(f"| without the life mark (runs begun before) | {plain:.2f} |")
    print(f"| with the life mark (new runs) | {marked:.2f} ({(marked / plain - 1) * 100:+.1f} %) |")
    print(
        f"life mark of a run read at partition 3, offset 1,234,567: {state.life!r}, "
        f"{sys.getsizeof(state.life)} B in memory (+8 B for its slot), "
        f"{len(state.to_bytes()) - len(_without_life(state).to_bytes())} B in the state record"
    )


def _without_life(state: RunState) -> RunState:
    copy = state.copy()
    copy.life = ""
    return copy


if __name__ == "__main__":
    main()
