"""A census of the Kafka requests each process sends Tansu in the relay's and Baton's phases.

A small TCP proxy stands in front of the broker (Tansu advertises the proxy's address, so every
connection goes through it) and counts, per process and client id, the requests of each API
(Fetch, Produce, Metadata, Heartbeat, OffsetCommit, ...) a second, the bytes sent and received,
and the broker's answer time; for Fetch also the fetch wait asked and the topics fetched. The
phases are ``bench.latency_bench``'s (fresh topics, the same client, reader and offered rate),
so the census shows what one side's processes ask of the broker while the rate is offered.
For the census only: the proxy adds a hop to every request, so its latencies are not
``latency_bench``'s.

    python -m bench.kafka_census                      # relay, baton at 2,000/s, 8 s each
    python -m bench.kafka_census --sides relay,baton,before --before-pythonpath /tmp/h1_before
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from baton.streams.embedded import _broker_binary
from baton.streams.net import free_port
from bench.latency_bench import (
    _PRODUCER,
    Reader,
    _ready_producer,
    baton_side,
    offer,
    relay_side,
)

#: the API keys a Kafka client uses, by number (the protocol's ApiKeys)
API_NAMES = {
    0: "Produce",
    1: "Fetch",
    2: "ListOffsets",
    3: "Metadata",
    8: "OffsetCommit",
    9: "OffsetFetch",
    10: "FindCoordinator",
    11: "JoinGroup",
    12: "Heartbeat",
    13: "LeaveGroup",
    14: "SyncGroup",
    18: "ApiVersions",
    19: "CreateTopics",
    22: "InitProducerId",
    24: "AddPartitionsToTxn",
    25: "AddOffsetsToTxn",
    26: "EndTxn",
    28: "TxnOffsetCommit",
    32: "DescribeConfigs",
}


@dataclass
class Tally:
    """What one (process, client id) asked of the broker: per API, requests, bytes, time."""

    requests: Counter[int] = field(default_factory=Counter)
    sent: Counter[int] = field(default_factory=Counter)
    received: Counter[int] = field(default_factory=Counter)
    answer_s: defaultdict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    fetch_waits: Counter[int] = field(default_factory=Counter)
    fetch_topics: Counter[str] = field(default_factory=Counter)
    produce_topics: Counter[str] = field(default_factory=Counter)
    #: seconds from a fetch's answer to the client's next fetch (its time between fetches)
    fetch_gaps: list[float] = field(default_factory=list)
    last_fetch_answer: float = 0.0
    #: fetches answered only after 90 % of their wait: Tansu held them, finding no records
    fetches_held: int = 0


def _produce_bytes(version: int, body: memoryview) -> dict[str, int]:
    """The record bytes a ProduceRequest body (versions 3-8) carries, by topic."""
    if version < 3 or version > 8:
        return {"?": len(body)}
    size = int.from_bytes(body[0:2], "big", signed=True)  # the transactional id
    pos = 2 + max(size, 0) + 6  # acks, timeout
    out: Counter[str] = Counter()
    topics = int.from_bytes(body[pos : pos + 4], "big")
    pos += 4
    for _ in range(min(topics, 1000)):
        size = int.from_bytes(body[pos : pos + 2], "big")
        topic = bytes(body[pos + 2 : pos + 2 + size]).decode(errors="replace")
        partitions = int.from_bytes(body[pos + 2 + size : pos + 6 + size], "big")
        pos += 6 + size
        for _ in range(min(partitions, 10000)):
            length = int.from_bytes(body[pos + 4 : pos + 8], "big", signed=True)
            out[topic] += max(length, 0)
            pos += 8 + max(length, 0)
    return out


def _fetch_detail(version: int, body: memoryview) -> tuple[int, list[str]]:
    """(the fetch wait in ms, the topics fetched) of a FetchRequest body; topics of the
    non-flexible versions only (4-11, what aiokafka sends); librdkafka's flexible ones
    (12+) carry topic ids."""
    if version >= 12:
        body = body[1:]  # the request header's tagged fields (none)
    at = 0 if version >= 15 else 4  # 15 moved the replica id into a tagged field
    wait = int.from_bytes(body[at : at + 4], "big", signed=True)
    if version < 4 or version > 11:
        return wait, ["?"]
    pos = 17 + (8 if version >= 7 else 0)  # replica, wait, min, max bytes, isolation, session
    topics = []
    count = int.from_bytes(body[pos : pos + 4], "big")
    pos += 4
    per_partition = 4 + (4 if version >= 9 else 0) + 8 + (8 if version >= 5 else 0) + 4
    for _ in range(min(count, 1000)):
        size = int.from_bytes(body[pos : pos + 2], "big")
        topics.append(bytes(body[pos + 2 : pos + 2 + size]).decode(errors="replace"))
        pos += 2 + size
        partitions = int.from_bytes(body[pos : pos + 4], "big")
        pos += 4 + partitions * per_partition
    return wait, topics


class Census:
    """The proxy and its counts: ``tallies[(process, client id)]``, reset by ``reset()``."""

    def __init__(self, upstream_port: int, names: dict[int, str]) -> None:
        self.upstream_port = upstream_port
        self.names = names  # pid -> what it is (the bench, the relay, the worker)
        self.tallies: defaultdict[tuple[int, str], Tally] = defaultdict(Tally)
        self.lock = threading.Lock()

    def reset(self) -> dict[tuple[int, str], Tally]:
        with self.lock:
            taken, self.tallies = self.tallies, defaultdict(Tally)
        return dict(taken)

    async def serve(self, port: int) -> None:
        server = await asyncio.start_server(self._connection, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    def _process_of(self, peer_port: int) -> int:
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{peer_port} )"],
            capture_output=True,
            text=True,
        ).stdout
        for part in out.split("pid=")[1:]:
            return int(part.split(",", 1)[0])
        return 0

    async def _connection(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter):
        peer_port = down_w.get_extra_info("peername")[1]
        process = await asyncio.get_running_loop().run_in_executor(
            None, self._process_of, peer_port
        )
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        pending: dict[int, tuple[int, float, tuple[int, str], int]] = {}
        await asyncio.gather(
            self._requests(down_r, up_w, process, pending),
            self._responses(up_r, down_w, pending),
            return_exceptions=True,
        )
        for writer in (up_w, down_w):
            writer.close()

    async def _requests(self, reader, writer, process: str, pending) -> None:
        while True:
            head = await reader.readexactly(4)
            frame = await reader.readexactly(int.from_bytes(head, "big"))
            writer.write(head + frame)
            view = memoryview(frame)
            api = int.from_bytes(view[0:2], "big")
            version = int.from_bytes(view[2:4], "big")
            correlation = int.from_bytes(view[4:8], "big")
            size = int.from_bytes(view[8:10], "big", signed=True)
            client = bytes(view[10 : 10 + max(size, 0)]).decode(errors="replace")
            key = (process, client)
            wait = 0
            with self.lock:
                tally = self.tallies[key]
                tally.requests[api] += 1
                tally.sent[api] += 4 + len(frame)
                if api == 1:
                    if tally.last_fetch_answer:
                        tally.fetch_gaps.append(time.perf_counter() - tally.last_fetch_answer)
                    wait, topics = _fetch_detail(version, view[10 + max(size, 0) :])
                    tally.fetch_waits[wait] += 1
                    tally.fetch_topics.update(topics)
                if api == 0:
                    tally.produce_topics.update(_produce_bytes(version, view[10 + max(size, 0) :]))
            pending[correlation] = (api, time.perf_counter(), key, wait)
            await writer.drain()

    async def _responses(self, reader, writer, pending) -> None:
        while True:
            head = await reader.readexactly(4)
            frame = await reader.readexactly(int.from_bytes(head, "big"))
            writer.write(head + frame)
            correlation = int.from_bytes(frame[0:4], "big")
            if correlation in pending:
                api, t0, key, wait = pending.pop(correlation)
                took = time.perf_counter() - t0
                with self.lock:
                    tally = self.tallies[key]
                    tally.received[api] += 4 + len(frame)
                    tally.answer_s[api].append(took)
                    if api == 1:
                        tally.last_fetch_answer = time.perf_counter()
                        tally.fetches_held += took >= 0.9e-3 * wait > 0
            await writer.drain()


def _start_broker(listen: int, advertise: int, log: Path) -> subprocess.Popen[bytes]:
    """Tansu listening on ``listen`` and telling clients to connect to ``advertise``."""
    return subprocess.Popen(
        [
            _broker_binary(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{listen}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{advertise}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def census_phase(
    bootstrap: str,
    side: AbstractContextManager[tuple[str, str, int]],
    label: str,
    census: Census,
    args: argparse.Namespace,
) -> tuple[dict[tuple[int, str], Tally], float]:
    """The counts of one phase while the rate was offered (after a warm-up), and its seconds."""
    with side as (requests, answers, pid):
        census.names[pid] = label
        reader = Reader(bootstrap, [answers], args.fetch_wait_ms)
        producer = _ready_producer({"bootstrap.servers": bootstrap, **_PRODUCER, "linger.ms": 0})
        try:
            while offer(producer, requests, reader, 200, 1.0, f"warm{uuid.uuid4().hex[:6]}"):
                reader.sent.clear()
            census.reset()
            t0 = time.perf_counter()
            offer(producer, requests, reader, args.rate, args.seconds, uuid.uuid4().hex[:6])
            return census.reset(), time.perf_counter() - t0
        finally:
            reader.close()


def _print_phase(
    label: str, tallies: dict[tuple[int, str], Tally], seconds: float, names: dict[int, str]
) -> None:
    print(f"\n### {label}: requests/s by process and client id ({seconds:.1f} s)\n")
    print(
        f"| {'process':<8} | {'client id':<28} | {'API':<16} | {'req/s':>7} | "
        f"{'KB/s sent':>9} | {'KB/s recv':>9} | {'answer p50 ms':>13} |"
    )
    print(f"|{'-' * 10}|{'-' * 30}|{'-' * 18}|{'-' * 9}|{'-' * 11}|{'-' * 11}|{'-' * 15}|")
    for (pid, client), tally in sorted(tallies.items()):
        process = names.get(pid, f"pid {pid}")
        for api, count in sorted(tally.requests.items(), key=lambda kv: -kv[1]):
            times = sorted(tally.answer_s[api])
            p50 = 1e3 * times[len(times) // 2] if times else float("nan")
            print(
                f"| {process:<8} | {client[:28]:<28} | {API_NAMES.get(api, str(api)):<16} | "
                f"{count / seconds:>7.1f} | {tally.sent[api] / seconds / 1e3:>9.1f} | "
                f"{tally.received[api] / seconds / 1e3:>9.1f} | {p50:>13.1f} |"
            )
        if tally.fetch_topics:
            waits = ", ".join(f"{w} ms x{n}" for w, n in tally.fetch_waits.most_common(3))
            topics = ", ".join(f"{t} x{n}" for t, n in tally.fetch_topics.most_common(6))
            gaps = sorted(tally.fetch_gaps) or [float("nan")]
            print(
                f"|   fetches of {process}/{client[:20]}: waits {waits}; topics {topics}; "
                f"answer -> next fetch p50 {1e3 * gaps[len(gaps) // 2]:.1f} ms, "
                f"p90 {1e3 * gaps[len(gaps) * 9 // 10]:.1f}; held to the wait "
                f"{100 * tally.fetches_held / sum(tally.fetch_waits.values()):.0f} % |"
            )
        if tally.produce_topics:
            kbs = ", ".join(
                f"{t} {n / seconds / 1e3:.1f} KB/s" for t, n in tally.produce_topics.most_common(6)
            )
            print(f"|   records produced by {process}/{client[:20]}: {kbs} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=int, default=2000, help="events/s offered")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of one phase")
    ap.add_argument("--fetch-wait-ms", type=int, default=10)
    ap.add_argument("--guarantee", default="at_least_once")
    ap.add_argument("--sides", default="relay,baton", help="relay, baton, before")
    ap.add_argument("--before-pythonpath", help="side 'before': Baton from this PYTHONPATH")
    args = ap.parse_args()
    listen, port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        broker = _start_broker(listen, port, Path(tmp) / "tansu.log")
        census = Census(listen, {os.getpid(): "bench"})
        loop = asyncio.new_event_loop()
        threading.Thread(
            target=loop.run_until_complete, args=(census.serve(port),), daemon=True
        ).start()
        time.sleep(1.0)
        bootstrap, workdir = f"127.0.0.1:{port}", Path(tmp)
        sides = {
            "relay": lambda: relay_side(bootstrap, args),
            "baton": lambda: baton_side(bootstrap, args, workdir),
            "before": lambda: baton_side(bootstrap, args, workdir, args.before_pythonpath),
        }
        try:
            for side in args.sides.split(","):
                print(f"{side} at {args.rate:,}/s ...", file=sys.stderr)
                tallies, seconds = census_phase(bootstrap, sides[side](), side, census, args)
                _print_phase(side, tallies, seconds, census.names)
        finally:
            broker.kill()  # Tansu waits for every client to leave on SIGTERM
            broker.wait(5)


if __name__ == "__main__":
    main()
