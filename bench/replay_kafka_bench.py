"""Recorded decisions per second of `baton replay --from-kafka`, against the audit replay.

Records engine_bench's realistic mix through the worker's batch step (replay_bench's
``record``: inputs attached, chains linked, the ``policy_in_force`` record first), then in the
same run:

* produces those decisions to an 8-partition gov.decisions topic on an embedded broker, as a
  worker does (key = run id, murmur2 partitions), and runs ``baton replay --from-kafka``
  (which reads that topic: cli/replay_decisions.py) under a stricter policy;
* stores the same decisions in a fresh chDB audit through the sink's insert path and runs
  ``baton replay`` on it (the baseline: the same rows, read from the audit).

Both commands alternate, ``--rounds`` times each, with ``--jobs`` processes; the rate is from
the seconds the command prints (from opening its source to its report), the CPU from its
processes' rusage (interpreter start and imports included). Both reports must be equal.

    python -m bench.replay_kafka_bench                    # 30,000 events (~48k decisions)
    python -m bench.replay_kafka_bench --events 120000 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import Producer

from baton.processors.compiled import core_build
from baton.schemas.policy import load_policy
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog, ensure_topics
from bench.replay_bench import KEY, PARTITIONS, record, store

STRICTER = "multi_agent:\n  max_handoffs: 3\n"


def produce(bootstrap: str, topic: str, decisions: list) -> None:
    """``decisions`` on ``topic`` as a worker publishes them: key run id, murmur2 partition."""
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    for d in decisions:
        key = d.run_id.encode()
        p.produce(topic, d.to_json(), key, partition=partition_for(key, PARTITIONS))
        p.poll(0)
    if p.flush(120) != 0:
        raise SystemExit("the broker did not take every decision within 120 s")


def replay(argv: list[str], env: dict[str, str]) -> tuple[float, float, dict]:
    """One `baton replay`: (the seconds it prints, its processes' CPU seconds, its report)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, env=env, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode not in (0, 1):
        raise SystemExit(f"baton replay exited {out.returncode}: {out.stderr[-2000:]!r}")
    report = orjson.loads(out.stdout)
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("ru_utime", "ru_stime"))
    return report.pop("seconds"), cpu, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    decisions = record(max(args.events * 2 // 15, 1), args.events, load_policy(None))
    print(f"recorded {len(decisions):,} decisions", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        prefix = f"rk{uuid.uuid4().hex[:6]}."
        catalog = TopicCatalog(prefix=prefix, partitions=PARTITIONS, replication=1)
        ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog, timeout=10)
        produce(broker.bootstrap, catalog.decisions, decisions)
        chdb = Path(tmp) / "chdb"
        store(chdb, decisions)
        del decisions
        policy = Path(tmp) / "stricter.yaml"
        policy.write_text(STRICTER)
        base = [sys.executable, "-c", "from baton.cli.main import main; main()", "replay"]
        base += ["--policy", str(policy), "--jobs", str(args.jobs), "--format", "json"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        env.update(
            BATON_AUDIT_CHAIN_KEY=KEY.decode(),
            BATON_TOPIC_PREFIX=prefix,
            BATON_PARTITIONS=str(PARTITIONS),
        )
        sides = {
            "`baton replay --from-kafka` (gov.decisions)": [
                *base,
                *("--from-kafka", "--bootstrap", broker.bootstrap),
            ],
            "`baton replay` (the audit, same decisions)": [*base, "--dsn", f"chdb://{chdb}"],
        }
        rows: dict[str, list[tuple[float, float, int]]] = {name: [] for name in sides}
        reports: dict[bytes, str] = {}
        for n in range(args.rounds):
            for name, argv in list(sides.items())[:: 1 if n % 2 == 0 else -1]:
                seconds, cpu, report = replay(argv, env)
                report.pop("core", None)
                # (the topic's runs come partition by partition, the audit's by run id)
                for listed in ("changes", "partial", "broken"):
                    if isinstance(report.get(listed), list):
                        report[listed].sort(key=orjson.dumps)
                reports.setdefault(orjson.dumps(report, option=orjson.OPT_SORT_KEYS), name)
                rows[name].append((seconds, cpu, report["decisions"]))
                print(f"round {n + 1}: {name} {seconds:.2f} s", file=sys.stderr, flush=True)
    print(
        f"# replay_kafka_bench: {args.events:,} events, --jobs {args.jobs}, {args.rounds} rounds; "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {core_build()} core"
    )
    print("| command | decisions | seconds per round | recorded decisions/s (best) | CPU s |")
    print("|---|---:|---|---:|---:|")
    for name, runs in rows.items():
        best = min(runs)
        shown = " · ".join(f"{s:.2f}" for s, _, _ in runs)
        print(f"| {name} | {best[2]:,} | {shown} | {best[2] / best[0]:,.0f} | {best[1]:.2f} |")
    if len(reports) == 1:
        print("reports equal")
    else:
        for text, name in reports.items():
            print(f"REPORTS DIFFER: {name}: {text[:600].decode()}")


if __name__ == "__main__":
    main()
