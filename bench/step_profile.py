"""The worker's batch step alone, as bench/rdk_worker.py runs it: CPU time, cProfile, or a fixed
amount of work for callgrind.

The latency bench's requests (four a run, bench/latency_bench.py ``_requests``), in batches of
``--size`` over 8 partitions, through ``BatchProcessor.process`` and each decision's
``to_json`` (the publisher's share that is Baton's), with the worker's reply spill and GC
settings; ``--warm`` batches first. Every batch is built before the clock runs, so with
``--mode none`` two runs of different ``--batches`` differ by the step alone:

    python -m bench.step_profile                       # CPU us an event: process, to_json
    python -m bench.step_profile --mode cprofile       # cProfile (thread_time): own, total time
    for n in 100 400; do valgrind --tool=callgrind python -m bench.step_profile --mode none \\
        --batches $n; done     # (Ir(400) - Ir(100)) / (300 * 23): instructions an event
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from baton.cli.options import read_policy
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.state_spill import configure
from baton.streams.partitioner import partition_for
from bench.latency_bench import _requests

_PARTITIONS = 8
_BUILT = 600  # batches built in every run, whatever --batches says


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", choices=["time", "cprofile", "none"], default="time")
    ap.add_argument("--batches", type=int, default=400, help=f"measured, at most {_BUILT}")
    ap.add_argument("--size", type=int, default=23, help="events a batch")
    ap.add_argument("--warm", type=int, default=200, help="batches before the measured ones")
    args = ap.parse_args()
    spill = Path(tempfile.mkdtemp()) / "spill"
    configure(spill, max_bytes=1 << 30, lost=lambda why: sys.exit(why))
    proc = BatchProcessor(
        read_policy(None), _PARTITIONS, {}, worker="w", approvals_topic="x.gov.approvals"
    )
    requests = _requests("p")
    offsets = [0] * _PARTITIONS

    def batch() -> list[InputRecord]:
        out = []
        for _ in range(args.size):
            _rid, key, value = next(requests)
            p = partition_for(key, _PARTITIONS)
            topic = "x.gov.handoff.requests"
            out.append(InputRecord(topic, p, offsets[p], key, value, None, time.time()))
            offsets[p] += 1
        return out

    warm = [batch() for _ in range(args.warm)]
    measured = [batch() for _ in range(_BUILT)][: args.batches]
    for b in warm:
        for _p, d in proc.process(b, datetime.now(UTC)).decisions:
            d.to_json()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)  # the worker's (cli/worker_cmd.py)
    if args.mode == "none":
        for b in measured:
            for _p, d in proc.process(b, datetime.now(UTC)).decisions:
                d.to_json()
    elif args.mode == "cprofile":
        import cProfile
        import pstats

        prof = cProfile.Profile(time.thread_time)
        prof.enable()
        for b in measured:
            for _p, d in proc.process(b, datetime.now(UTC)).decisions:
                d.to_json()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        pstats.Stats(prof).sort_stats("cumtime").print_stats(40)
    else:
        step = encode = 0.0
        for b in measured:
            t0 = time.thread_time()
            out = proc.process(b, datetime.now(UTC))
            t1 = time.thread_time()
            for _p, d in out.decisions:
                d.to_json()
            step += t1 - t0
            encode += time.thread_time() - t1
        n = args.size * len(measured)
        print(
            f"{n} events in batches of {args.size}: process {1e6 * step / n:.1f} us an event, "
            f"decisions' to_json {1e6 * encode / n:.1f}"
        )


if __name__ == "__main__":
    main()
