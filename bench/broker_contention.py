"""How long the broker takes to acknowledge the worker's output pattern, alone and next to readers.

Replays what a ``baton worker`` writes at 2,000 events/s against an embedded Tansu, without
the worker: 15 decisions and then 4 run states every 7.5 ms from one idempotent
confluent-kafka producer (the states of a batch once its decisions are acknowledged), next
to a client thread sending 2,000 one-record produce requests a second (the latency bench's
client). Each variant adds consumers the way the latency bench has them: one tailing the
client's topic (the worker, the relay), one tailing the decisions (the reader), one idle on
an empty topic (the control follower). It prints the decisions' produce -> delivery report
latency and librdkafka's own account (produce requests/s, queue wait, broker round trip).

Variants run one after another on fresh producers but the same topics: Tansu's fetch cost
grows with a partition's log, so later variants are slower; compare a variant with the same
one in the next round.

    python bench/broker_contention.py                         # alone, then with both readers
    python bench/broker_contention.py --variants alone,client-reader,idle-reader --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from typing import Any

import orjson
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from baton.streams.embedded import EmbeddedBroker

#: variant -> the topics tailed meanwhile (fetch wait 10 ms; "ctl" 100 ms, always empty)
VARIANTS = {
    "alone": (),
    "client-reader": ("req",),
    "decisions-reader": ("dec",),
    "both-readers": ("req", "dec"),
    "idle-reader": ("ctl",),
}
_BATCH_EVERY_S = 0.0075


def _tail(bootstrap: str, topic: str, stop: threading.Event) -> None:
    wait = 100 if topic == "ctl" else 10
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"tail-{topic}", "fetch.wait.max.ms": wait}
    )
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
    while not stop.is_set():
        if c.poll(0.1) is not None:
            c.consume(10_000, 0)
    c.close()


def _client(conf: dict[str, Any], stop: threading.Event) -> None:
    """2,000 one-record produce requests a second (linger 0), like the latency bench's client."""
    p, i, t0 = Producer(conf), 0, time.perf_counter()
    while not stop.is_set():
        while time.perf_counter() < t0 + i / 2000:
            time.sleep(0.0003)
        p.produce("req", b"r" * 300, key=str(i).encode())
        p.poll(0)
        i += 1
    p.flush(5)


def worker_pattern(conf: dict[str, Any], seconds: float) -> tuple[list[float], dict[str, Any]]:
    """Decisions' produce -> delivery report latencies, and librdkafka's last statistics."""
    stats: list[dict[str, Any]] = []
    p = Producer(
        {
            **conf,
            "statistics.interval.ms": 1000,
            "stats_cb": lambda s: stats.append(orjson.loads(s)),
        }
    )
    p.produce("dec", b"w")
    p.flush(5)
    latencies: list[float] = []
    waiting: list[tuple[dict[str, int], dict[bytes, bytes]]] = []
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        left = {"n": 15}

        def acked(err: Any, msg: Any, t0: float = t0, left: dict[str, int] = left) -> None:
            latencies.append(time.perf_counter() - t0)
            left["n"] -= 1

        for i in range(15):
            p.produce("dec", b"d" * 1500, key=f"run{n + i}".encode(), on_delivery=acked)
        waiting.append((left, {f"run{n + 4 * j}".encode(): b"s" * 1200 for j in range(4)}))
        n += 15
        while time.perf_counter() < t0 + _BATCH_EVERY_S:
            p.poll(0)
            while waiting and waiting[0][0]["n"] == 0:  # states once the decisions are acked
                for key, state in waiting.pop(0)[1].items():
                    p.produce("chg", state, key=key)
            time.sleep(0.0005)
    p.flush(10)
    p.poll(0)
    return latencies, _producer_account(stats)


def _producer_account(stats: list[dict[str, Any]]) -> dict[str, Any]:
    if len(stats) < 3:
        return {}
    first, last = stats[1], stats[-1]
    broker = next(b for b in last["brokers"].values() if b["req"].get("Produce"))
    before = first["brokers"][broker["name"]]
    span = (last["ts"] - first["ts"]) / 1e6
    return {
        "requests_per_s": (broker["req"]["Produce"] - before["req"]["Produce"]) / span,
        "queue_ms": broker["int_latency"]["p50"] / 1e3,
        "rtt_ms": broker["rtt"]["p50"] / 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variants", default="alone,both-readers", help=", ".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        topics = [NewTopic(t, 8, 1) for t in ("req", "dec", "chg")] + [NewTopic("ctl", 1, 1)]
        for future in admin.create_topics(topics).values():
            future.result(10)
        conf = {
            "bootstrap.servers": broker.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
            "compression.type": "none",
        }
        client_stop = threading.Event()
        threading.Thread(target=_client, args=(conf, client_stop), daemon=True).start()
        time.sleep(1)
        print("| round | variant | p50 ms | p90 ms | p99 ms | requests/s | queue ms | RTT ms |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for r in range(args.rounds):
            for variant in args.variants.split(","):
                stop = threading.Event()
                readers = [
                    threading.Thread(target=_tail, args=(broker.bootstrap, t, stop), daemon=True)
                    for t in VARIANTS[variant]
                ]
                for t in readers:
                    t.start()
                time.sleep(0.5)
                latencies, account = worker_pattern(conf, args.seconds)
                stop.set()
                for t in readers:
                    t.join(5)
                q = statistics.quantiles(latencies, n=100)
                print(
                    f"| {r + 1} | {variant} | {q[49] * 1e3:.2f} | {q[89] * 1e3:.2f} "
                    f"| {q[98] * 1e3:.2f} | {account.get('requests_per_s', 0):,.0f} "
                    f"| {account.get('queue_ms', 0):.2f} | {account.get('rtt_ms', 0):.2f} |",
                    flush=True,
                )
        client_stop.set()


if __name__ == "__main__":
    main()
