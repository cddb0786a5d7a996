"""Decision latency of publishing shapes, without Faust or the engine: relays that read like the
worker (aiokafka, read_committed) and write like it, or like the bare relay, same run.

Each shape is a relay process re-producing every request it reads (same key and partition),
timed by the latency bench's client and reader (``bench/latency_bench.py``: fresh topics and
process per phase, phases alternating):

* ``flush``: one flush per fetch (the bare relay's shape, read with aiokafka);
* ``pipe``: no flush: records handed to librdkafka, reports served at each fetch (the
  worker's pipelining);
* ``pipe+states``: the same, plus one 1.4 KB "run state" per two records to another topic
  through the same producer (the worker at 2,000 events/s writes ~0.3-0.5 a record);
* ``pipe+states2``: the states through a second producer (its own connection);
* ``flush+states``: a flush per fetch, then the states, not waited for;
* ``gated``: no flush, but one send in flight: what is fetched while it is in flight is held
  and sent together once it is acknowledged (the relay keeps fetching meanwhile).

What it separates: the cost of the publishing shape on the broker (pipelining, states, one
connection or two) from Faust's receive path and the engine, which the latency bench's worker
side has too.

    python -m bench.relay_shapes                       # every shape, 2 rounds of 10 s
    python -m bench.relay_shapes --shapes pipe,pipe+states,pipe+states2 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Producer

SHAPES = ("flush", "pipe", "pipe+states", "pipe+states2", "flush+states", "gated")
_STATE = b"s" * 1400


async def _relay(bootstrap: str, src: str, dst: str, shape: str) -> None:
    """Re-produce every record of ``src`` to ``dst`` in ``shape`` until stdin closes."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from bench.latency_bench import _PRODUCER

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        fetch_max_wait_ms=10,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    consumer.assign([TopicPartition(src, p) for p in range(8)])
    await consumer.seek_to_end()
    producer = Producer({"bootstrap.servers": bootstrap, **_PRODUCER})
    states = Producer({"bootstrap.servers": bootstrap, **_PRODUCER})
    state_producer = states if shape == "pipe+states2" else producer
    in_flight = [0]  # gated: records of the send in flight not yet acknowledged
    held: list = []

    def acked(err: object, msg: object) -> None:
        in_flight[0] -= 1

    print("relay ready", flush=True)
    try:
        while not stop.is_set():
            wait_ms = 1 if held else 200  # gated: come back soon to send what is held
            fetched = await consumer.getmany(timeout_ms=wait_ms)
            records = [m for batch in fetched.values() for m in batch]
            if shape == "gated":
                producer.poll(0)
                held += records
                if held and not in_flight[0]:
                    records, held = held, []
                    in_flight[0] = len(records)
                    for m in records:
                        producer.produce(
                            dst, m.value, m.key, partition=m.partition, on_delivery=acked
                        )
                continue
            for m in records:
                producer.produce(dst, m.value, m.key, partition=m.partition)
            if records and shape.startswith("flush"):
                producer.flush(30)
            if records and shape.endswith(("states", "states2")):
                for i in range(max(1, len(records) // 2)):
                    state_producer.produce(f"{dst}.states", _STATE, b"run%d" % i, partition=i % 8)
            producer.poll(0)
            states.poll(0)
    finally:
        await consumer.stop()
        producer.flush(10)
        states.flush(10)


@contextmanager
def _side(bootstrap: str, shape: str) -> Iterator[tuple[str, str, int]]:
    """A relay of ``shape`` on fresh topics: (where requests go, where answers come, its pid)."""
    from bench.latency_bench import _fresh_topics

    prefix = f"shape{uuid.uuid4().hex[:6]}."
    src, dst = f"{prefix}in", f"{prefix}out"
    _fresh_topics(bootstrap, src, dst, f"{dst}.states")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.relay_shapes", "--relay", bootstrap, src, dst, shape],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None and proc.stdin is not None
    if proc.stdout.readline().strip() != b"relay ready":
        raise SystemExit(f"the {shape} relay did not start")
    try:
        yield src, dst, proc.pid
    finally:
        proc.stdin.close()
        proc.wait(10)


def measure(args: argparse.Namespace) -> None:
    from baton.streams.embedded import EmbeddedBroker
    from bench.latency_bench import phase
    from bench.worker_bench import _p50_p99_ms

    shapes = args.shapes.split(",")
    for shape in shapes:
        if shape not in SHAPES:
            raise SystemExit(f"--shapes: unknown shape {shape!r}; expected some of {SHAPES}")
    rounds: dict[str, list[list[float]]] = {shape: [] for shape in shapes}
    cpu: dict[str, list[tuple[float, float]]] = {shape: [] for shape in shapes}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        broker_pid = broker._proc.pid if broker._proc is not None else None
        for r in range(args.rounds):
            for shape in shapes:
                print(f"round {r + 1}: {shape} ...", file=sys.stderr)
                got, _, used = phase(
                    broker.bootstrap, _side(broker.bootstrap, shape), args, broker_pid
                )
                rounds[shape].append(got)
                cpu[shape].append(used)
    print(
        f"\n{args.rate:,} requests/s offered, {args.rounds} rounds of {args.seconds:g} s per shape "
        "(alternating), 8 partitions, fetch wait 10 ms\n"
    )
    head = f"| {'shape':<13} | {'p50 ms':>7} | {'p99 ms':>7} | {'p50 per round':<28} "
    print(head + f"| {'CPU us/event':>12} | {'broker':>6} |")
    print(f"|{'-' * 15}|{'-' * 9}|{'-' * 9}|{'-' * 30}|{'-' * 14}|{'-' * 8}|")
    for shape, samples in rounds.items():
        p50, p99 = _p50_p99_ms([s for one in samples for s in one])
        per_round = " · ".join(f"{_p50_p99_ms(one)[0]:.1f}" for one in samples)
        events = args.rate * args.seconds * len(samples)
        own = 1e6 * sum(c[0] for c in cpu[shape]) / events
        broker_us = 1e6 * sum(c[1] for c in cpu[shape]) / events
        row = f"| {shape:<13} | {p50:>7.1f} | {p99:>7.1f} | {per_round:<28} "
        print(row + f"| {own:>12.0f} | {broker_us:>6.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument(
        "--relay", nargs=4, metavar=("BOOTSTRAP", "SRC", "DST", "SHAPE"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    args.fetch_wait_ms = 10  # the latency bench's phase reads these
    args.guarantee = "at_least_once"
    if args.relay:
        asyncio.run(_relay(*args.relay))
    else:
        measure(args)


if __name__ == "__main__":
    main()
