"""Produce requests the worker's publisher makes for a fixed stream of batches, this checkout
against another (``--before-pythonpath``), phases alternating, each on a fresh Tansu.

Drives ``BatchPublisher.publish_decisions_first`` with real batches (``BatchProcessor`` over
handoffs of ``--runs`` runs, 8 partitions) every ``--every-ms``, as the worker does at
2,000 events/s, with a consumer tailing the decisions (a reader, so Tansu's fetch load is
there) and reads librdkafka's own account (statistics every second): produce requests/s,
records a request, queue wait and round trip; and each batch's time to durable (states
acknowledged), and the reader's age of each decision on arrival (now minus its CreateTime,
millisecond resolution). No worker, no fetch: the publisher's own requests only, so the
comparison is not drowned by a busy host's fetch timing.

    python -m bench.publish_bench --seconds 8 --rounds 3 --before-pythonpath DIR
    python -m bench.publish_bench --sides 'baton,conf:{"linger.ms":2}'
    python -m bench.publish_bench --sides baton,aiokafka --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson

_PARTITIONS = 8


def _phase(args: argparse.Namespace) -> dict[str, Any]:
    """One phase in this process: the publisher under a fixed batch stream; its figures."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from baton.processors.batch import BatchProcessor, InputRecord
    from baton.processors.publish import BatchPublisher
    from baton.processors.publish_aiokafka import AiokafkaPublisher
    from baton.schemas.policy import load_policy
    from baton.streams.embedded import EmbeddedBroker
    from baton.streams.partitioner import partition_for
    from tests.helpers import handoff

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        topics = ["d", "s", "dl", "c"]
        for f in admin.create_topics([NewTopic(t, _PARTITIONS, 1) for t in topics]).values():
            f.result(10)
        stats: list[dict[str, Any]] = []

        def on_stats(raw: str) -> None:
            doc = orjson.loads(raw)
            produce = sum(b.get("req", {}).get("Produce", 0) for b in doc["brokers"].values())
            rtt = [b["rtt"]["p50"] for b in doc["brokers"].values() if b["rtt"]["cnt"]]
            queue = [b["int_latency"]["p50"] for b in doc["brokers"].values() if b["rtt"]["cnt"]]
            stats.append(
                {
                    "t": time.monotonic(),
                    "requests": produce,
                    "msgs": doc.get("txmsgs", 0),
                    "rtt": max(rtt, default=0),
                    "queue": max(queue, default=0),
                }
            )

        aio = _AioCounts() if args.producer == "aiokafka" else None
        if aio is not None:
            publisher: Any = AiokafkaPublisher(
                {"bootstrap_servers": broker.bootstrap, **orjson.loads(args.producer_conf)},
                decisions_topic="d",
                stops_topic="s",
                deadletter_topic="dl",
                changelog_topic="c",
            )
        else:
            publisher = BatchPublisher(
                {
                    "bootstrap.servers": broker.bootstrap,
                    "statistics.interval.ms": 1000,
                    "stats_cb": on_stats,
                    **orjson.loads(args.producer_conf),
                },
                decisions_topic="d",
                stops_topic="s",
                deadletter_topic="dl",
                changelog_topic="c",
            )
        stop = threading.Event()
        seen_ms: list[float] = []
        reader = threading.Thread(target=_tail, args=(broker.bootstrap, stop, seen_ms), daemon=True)
        reader.start()
        states: dict[bytes, Any] = {}
        proc = BatchProcessor(load_policy(None), _PARTITIONS, states, worker="bench")
        counts: dict[str, int] = {}

        def batch(i: int) -> Any:
            records = []
            for j in range(args.events):
                run = f"run_{(i * args.events + j) % args.runs}"
                n = counts[run] = counts.get(run, 0) + 1
                raw = handoff(run, n, "x").to_json()
                records.append(
                    InputRecord(
                        "gov.handoff.requests",
                        partition_for(run.encode(), _PARTITIONS),
                        i * 1000 + j,
                        run.encode(),
                        raw,
                    )
                )
            out = proc.process(records, datetime.now(UTC))
            if args.no_states:  # the experiment: what the run states' sends cost in requests
                out.changed, out.encoded = {}, {}
            return out

        async def drive() -> list[float]:
            loop = asyncio.get_running_loop()
            durable_ms: list[float] = []
            start = loop.time()
            if aio is not None:
                aio.sample(stats)
            i = 0
            while loop.time() - start < args.seconds:
                out = batch(i)
                t0 = loop.time()
                done = await publisher.publish_decisions_first(out)
                done.add_done_callback(lambda _f, t0=t0: durable_ms.append(loop.time() - t0))
                i += 1
                await asyncio.sleep(max(0.0, start + i * args.every_ms / 1e3 - loop.time()))
            await done
            if aio is not None:
                await publisher.stop()
            return durable_ms

        t_start = time.monotonic()
        durable = asyncio.run(drive())
        t_end = time.monotonic()
        if aio is None:
            publisher._producer.flush(10)
        stop.set()
        reader.join(5)
    window = [s for s in stats if t_start + 1 <= s["t"] <= t_end]
    a, b = window[0], window[-1]
    span = b["t"] - a["t"]
    reqs = b["requests"] - a["requests"]
    batches = len(durable) * span / (t_end - t_start)
    cpu = time.process_time()
    return {
        "requests_s": reqs / span,
        "records_each": (b["msgs"] - a["msgs"]) / max(reqs, 1),
        "requests_batch": reqs / max(batches, 1),
        "queue_ms": statistics.median(s["queue"] for s in window) / 1e3,
        "rtt_ms": statistics.median(s["rtt"] for s in window) / 1e3,
        "reader_p50": statistics.median(seen_ms),
        "reader_p99": statistics.quantiles(seen_ms, n=100)[98],
        "durable_p50": statistics.median(durable) * 1e3,
        "durable_p99": statistics.quantiles(durable, n=100)[98] * 1e3,
        "batches": len(durable),
        "cpu_s": cpu,
        # batches a state send covered (1.0 before the group commit: one send a batch)
        "batches_send": (
            getattr(publisher, "states", None)
            and publisher.states.batches / max(publisher.states.sends, 1)
        )
        or 1.0,
    }


class _AioCounts:
    """aiokafka's produce requests (its sender's calls), counted as librdkafka's statistics
    count them, sampled every second into the same rows."""

    def __init__(self) -> None:
        from aiokafka.producer import sender

        self.requests = 0
        self.msgs = 0
        self.rtts: list[float] = []
        real = sender.Sender._send_produce_req

        async def counted(sender_self: Any, node_id: int, batches: dict[Any, Any]) -> None:
            self.requests += 1
            self.msgs += sum(b.record_count for b in batches.values())
            t0 = time.monotonic()
            await real(sender_self, node_id, batches)
            self.rtts.append(time.monotonic() - t0)

        sender.Sender._send_produce_req = counted  # type: ignore[method-assign]

    def sample(self, stats: list[dict[str, Any]]) -> None:
        rtts, self.rtts = self.rtts, []
        rtt_us = statistics.median(rtts) * 1e6 if rtts else 0
        stats.append(
            {"t": time.monotonic(), "requests": self.requests, "msgs": self.msgs,
             "rtt": rtt_us, "queue": 0}
        )  # fmt: skip
        asyncio.get_running_loop().call_later(1.0, self.sample, stats)


def _tail(bootstrap: str, stop: threading.Event, seen_ms: list[float]) -> None:
    """Read the decisions as a client would; each one's age (ms, from its CreateTime) on arrival."""
    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "fetch.wait.max.ms": 10})
    c.assign([TopicPartition("d", p, OFFSET_END) for p in range(_PARTITIONS)])
    while not stop.is_set():
        first = c.poll(0.1)
        if first is None:
            continue
        for msg in [first, *c.consume(10_000, 0)]:
            if msg.error() is None:
                seen_ms.append(time.time() * 1e3 - msg.timestamp()[1])
    c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--every-ms", type=float, default=7.5, help="one batch every this long")
    ap.add_argument("--events", type=int, default=15, help="events a batch")
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--before-pythonpath", help="DIR holding another checkout as DIR/baton")
    ap.add_argument(
        "--sides",
        default="baton,before",
        help="baton, before (needs --before-pythonpath), dir:DIR (Baton from DIR/baton), "
        'conf:JSON (this checkout, producer properties added, e.g. conf:{"linger.ms":2}), '
        "nostates (this checkout writing no run states: what they cost in requests), "
        "aiokafka (this checkout's aiokafka publisher: one request a broker at a time)",
    )
    ap.add_argument("--producer-conf", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--producer", default="librdkafka", help=argparse.SUPPRESS)
    ap.add_argument("--no-states", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--phase", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(orjson.dumps(_phase(args)).decode())
        return
    sides = [s for s in args.sides.split(",") if s != "before" or args.before_pythonpath]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows: list[tuple[int, str, dict[str, Any]]] = []
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            env = dict(os.environ)
            other = args.before_pythonpath if side == "before" else None
            other = side[4:] if side.startswith("dir:") else other
            path = [other, root] if other else [root]
            env["PYTHONPATH"] = ":".join(path)
            cmd = [sys.executable, "-m", "bench.publish_bench", "--phase"]
            cmd += ["--seconds", str(args.seconds), "--every-ms", str(args.every_ms)]
            cmd += ["--events", str(args.events), "--runs", str(args.runs)]
            if side.startswith("conf:"):
                cmd += ["--producer-conf", side[5:]]
            if side == "nostates":
                cmd += ["--no-states"]
            if side.startswith("aiokafka"):
                cmd += ["--producer", "aiokafka"]
            if side.startswith("aiokafka:"):
                cmd += ["--producer-conf", side[9:]]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rows.append((r + 1, side, orjson.loads(done.stdout.strip().splitlines()[-1])))
            print(f"round {r + 1}: {side} done", file=sys.stderr)
    print(
        "| round | side   | reader p50 ms | reader p99 ms | requests/s | records each "
        "| requests a batch | queue p50 ms "
        "| rtt p50 ms | durable p50 ms | durable p99 ms | CPU s | batches a state send |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r, side, m in rows:
        print(
            f"| {r} | {side:<6} | {m['reader_p50']:.1f} | {m['reader_p99']:.1f} "
            f"| {m['requests_s']:,.0f} | {m['records_each']:.2f} "
            f"| {m['requests_batch']:.2f} | {m['queue_ms']:.2f} | {m['rtt_ms']:.2f} "
            f"| {m['durable_p50']:.1f} | {m['durable_p99']:.1f} | {m['cpu_s']:.2f} "
            f"| {m['batches_send']:.2f} |"
        )


if __name__ == "__main__":
    main()
