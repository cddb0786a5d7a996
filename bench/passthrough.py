"""Events per second of a plain confluent-kafka consume -> produce loop: the ceiling for the worker.

No Faust, no engine, no state: the loop reads handoff requests in batches, produces each to an
output topic with the same key (murmur2, as the worker does), serves delivery reports with
``poll(0)`` and flushes at the end. Whatever the worker does on top of this costs throughput;
this number is what the broker and librdkafka allow on this machine.

The consumer uses ``assign`` (no group join: on Tansu a join takes session.timeout/2) and the
clock starts at the first record received, so start-up is not measured.

    python bench/passthrough.py                       # embedded Tansu, 30,000 events, 4,000 runs
    python bench/passthrough.py --bootstrap host:9092 # an existing broker

``run_passthrough`` is importable (``from bench.passthrough import run_passthrough`` when run as
``python -m bench.<module>`` from the repo root) so the worker benchmark can measure its
baseline in the same run, on the same broker.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from baton.schemas.events import HandoffRequested
from baton.streams.embedded import EmbeddedBroker
from baton.streams.kafka import admin_config, consumer_config, producer_config
from baton.streams.topics import TopicCatalog, ensure_topics

__all__ = ["make_handoff_requests", "preload", "run_passthrough"]

_AGENTS = ["orchestrator", "planner", "researcher", "coder", "reviewer", "billing", "support"]
_ACTIONS = [None, None, "search.web", "code.write", "billing.refund.create", "ticket.update"]


def make_handoff_requests(n: int, runs: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """``n`` realistic ``handoff_requested`` events (key, JSON value) spread over ``runs`` runs."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    run_ids = [f"run-{uuid.UUID(int=rng.getrandbits(128))}" for _ in range(runs)]
    events = []
    for i in range(n):
        run_id = run_ids[rng.randrange(runs)]
        event = HandoffRequested(
            request_id=f"req-{i:08d}-{rng.getrandbits(32):08x}",
            run_id=run_id,
            tenant=f"tenant-{rng.randrange(20)}",
            task_id=f"task-{rng.randrange(40)}",
            parent_task_id=f"task-{rng.randrange(8)}",
            from_agent=rng.choice(_AGENTS),
            to_agent=rng.choice(_AGENTS),
            action=rng.choice(_ACTIONS),
            estimated_usd=round(rng.uniform(0.01, 2.0), 4),
            event_time=start + timedelta(milliseconds=i * 3),
        )
        events.append((run_id.encode(), event.to_json()))
    return events


def preload(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> float:
    """Produce ``events`` to ``topic`` with Baton's producer config; return the seconds taken."""
    errors: list[KafkaError] = []
    producer = _ready_producer(
        producer_config(
            {"bootstrap.servers": bootstrap},
            {"on_delivery": lambda err, _msg: err is not None and errors.append(err)},
        )
    )
    started = time.perf_counter()
    for key, value in events:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:  # queue full: let deliveries drain, then retry
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    elapsed = time.perf_counter() - started
    if left or errors:
        raise RuntimeError(f"preload: {left} undelivered, {len(errors)} errors: {errors[:3]}")
    return elapsed


def _ready_producer(conf: dict[str, Any], timeout_s: float = 10.0) -> Producer:
    """A producer whose idempotent producer id is assigned, so it can send at once.

    A fresh idempotent producer holds every record for ~0.55 s until librdkafka's InitProducerId
    completes (measured on Tansu; stats ``eos.idemp_state``: WaitTransport ... Assigned). Left
    in the timed loop, that start-up would decide the result whenever it outlasts the
    consumer's first fetch, and the benchmark would be bimodal (30k vs 100k+ events/s).
    """
    state: list[str] = []

    def on_stats(stats_json: str) -> None:
        if not state or state[-1] != "Assigned":  # stop parsing once ready: keep poll() cheap
            state.append(orjson.loads(stats_json).get("eos", {}).get("idemp_state", ""))

    producer = Producer({**conf, "statistics.interval.ms": 100, "stats_cb": on_stats})
    deadline = time.monotonic() + timeout_s
    while not state or state[-1] != "Assigned":
        if time.monotonic() > deadline:
            raise RuntimeError(f"producer id not assigned after {timeout_s:g} s: {state[-3:]}")
        producer.poll(0.05)
    return producer


def run_passthrough(
    bootstrap: str,
    topic_in: str,
    topic_out: str,
    n: int,
    *,
    batch: int = 1000,
    parse_json: bool = False,
    stall_timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Consume the first ``n`` records of ``topic_in`` and produce each to ``topic_out``.

    Returns ``{"events", "seconds", "events_per_s", "batch", "parse_json"}``; ``seconds`` runs
    from the first record received until every output record is acknowledged. With
    ``parse_json`` each value is decoded and re-encoded with orjson (the worker must parse).
    """
    base = {"bootstrap.servers": bootstrap}
    errors: list[KafkaError] = []
    producer = _ready_producer(
        producer_config(base, {"on_delivery": lambda e, _m: e is not None and errors.append(e)})
    )
    consumer = Consumer(consumer_config(base, f"bench-passthrough-{uuid.uuid4().hex[:8]}"))
    try:
        partitions = consumer.list_topics(topic_in, timeout=10).topics[topic_in].partitions
        consumer.assign([TopicPartition(topic_in, p, OFFSET_BEGINNING) for p in partitions])
        produce, poll = producer.produce, producer.poll
        loads, dumps = orjson.loads, orjson.dumps
        done = 0
        started: float | None = None
        last_progress = time.monotonic()
        while done < n:
            messages: list[Message] = consumer.consume(
                num_messages=min(batch, n - done), timeout=1.0
            )
            if not messages:
                if time.monotonic() - last_progress > stall_timeout_s:
                    raise RuntimeError(
                        f"passthrough stalled: {done} of {n} records after {stall_timeout_s:g} s"
                    )
                continue
            if started is None:
                started = time.perf_counter()
            last_progress = time.monotonic()
            for msg in messages:
                if msg.error() is not None:
                    raise RuntimeError(f"consume error: {msg.error()}")
                value = msg.value()
                if parse_json:
                    value = dumps(loads(value))
                while True:
                    try:
                        produce(topic_out, value=value, key=msg.key())
                        break
                    except BufferError:  # librdkafka's queue is full: serve deliveries first
                        poll(0.05)
                poll(0)
            done += len(messages)
        left = producer.flush(60)
        assert started is not None
        seconds = time.perf_counter() - started
    finally:
        consumer.close()
    if left or errors:
        raise RuntimeError(f"passthrough: {left} undelivered, {len(errors)} errors: {errors[:3]}")
    return {
        "events": n,
        "seconds": seconds,
        "events_per_s": n / seconds,
        "batch": batch,
        "parse_json": parse_json,
    }


def _bench(bootstrap: str, args: argparse.Namespace) -> None:
    catalog = TopicCatalog(prefix=f"bench.{uuid.uuid4().hex[:6]}.", partitions=args.partitions)
    ensure_topics(admin_config({"bootstrap.servers": bootstrap}), catalog, timeout=10)
    events = make_handoff_requests(args.events, args.runs)
    avg_bytes = sum(len(v) for _, v in events) / len(events)
    preload_s = preload(bootstrap, catalog.requests, events)

    rows: list[tuple[str, list[dict[str, Any]]]] = []
    for label, parse_json in (
        ("consume -> produce", False),
        ("consume -> orjson -> produce", True),
    ):
        results = [
            run_passthrough(
                bootstrap,
                catalog.requests,
                catalog.decisions,
                args.events,
                batch=args.batch,
                parse_json=parse_json,
            )
            for _ in range(args.repeat)
        ]
        rows.append((label, results))

    print(
        f"python {platform.python_version()} on {platform.machine()}, broker {bootstrap}, "
        f"{args.events:,} events over {args.runs:,} runs, {args.partitions} partitions, "
        f"{avg_bytes:.0f} B/event, batch {args.batch}, {args.repeat} repeats"
    )
    print()
    print(f"| {'measure':<30} | {'median events/s':>15} | {'best events/s':>13} |")
    print(f"|{'-' * 32}|{'-' * 17}|{'-' * 15}|")
    print(f"| {'preload (produce only)':<30} | {args.events / preload_s:>15,.0f} | {'':>13} |")
    for label, results in rows:
        rates = [r["events_per_s"] for r in results]
        print(f"| {label:<30} | {statistics.median(rates):>15,.0f} | {max(rates):>13,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="existing broker HOST:PORT (default: embedded Tansu)")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=4_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1000, help="consume(num_messages=...)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.bootstrap:
        _bench(args.bootstrap, args)
    else:
        with EmbeddedBroker() as broker:
            _bench(broker.bootstrap, args)


if __name__ == "__main__":
    main()
