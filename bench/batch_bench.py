"""Events per second of the worker's batch step without Kafka: parse, route, decide, link the
hash chain, measure and encode each changed run state (``BatchProcessor.process``).

The step the worker runs per fetched batch, on engine_bench's realistic mix (30,000 events
over 4,000 runs, in batches of 1,000), best of three passes; once with CPython's default
garbage-collector thresholds and once with the worker's (``baton worker`` raises gen 0 to
100,000: the collector walks every live run state).

    python -m bench.batch_bench
"""

from __future__ import annotations

import argparse
import gc
import platform
import time
from datetime import UTC, datetime

from baton.processors.batch import BatchProcessor, InputRecord
from baton.schemas.policy import load_policy
from baton.streams.partitioner import partition_for
from bench.engine_bench import build_workload

PARTITIONS = 8
APPROVALS = "gov.approvals"


def records(runs: int, events: int) -> list[InputRecord]:
    out = []
    for i, (run, ev, _) in enumerate(build_workload(runs)[:events]):
        key = run.encode()
        topic = APPROVALS if ev.type.startswith("approval") else "gov.handoff.requests"
        out.append(InputRecord(topic, partition_for(key, PARTITIONS), i, key, ev.to_json()))
    return out


def best_rate(recs: list[InputRecord], batch: int, passes: int = 3) -> float:
    best = float("inf")
    for _ in range(passes):
        proc = BatchProcessor(
            load_policy(None), PARTITIONS, {}, worker="bench", approvals_topic=APPROVALS
        )
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        for i in range(0, len(recs), batch):
            proc.process(recs[i : i + batch], now)
        best = min(best, time.perf_counter() - t0)
    return len(recs) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4000)
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args()
    recs = records(args.runs, args.events)
    default = best_rate(recs, args.batch)
    gc.set_threshold(100_000, 50, 100)
    tuned = best_rate(recs, args.batch)
    print(
        f"machine: {platform.node()} {platform.machine()}, python "
        f"{platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(f"workload: {len(recs):,} events over {args.runs:,} runs, batches of {args.batch:,}")
    print()
    print("| garbage collector | events/s |")
    print("|---|---|")
    print(f"| CPython default thresholds | {default:,.0f} |")
    print(f"| gen 0 at 100,000 (baton worker) | {tuned:,.0f} |")


if __name__ == "__main__":
    main()
