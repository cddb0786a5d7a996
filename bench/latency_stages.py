"""Where a decision's milliseconds go: per-stage timestamps of every request, worker and relay.

Runs the latency bench's phases (a bare relay, a ``baton worker``) with timestamps at every
stage a request passes, all on the host's monotonic clock (``time.perf_counter`` is
CLOCK_MONOTONIC on Linux, the same in every process):

    client produce -> client's delivery report (the broker appended it; Tansu has no
    LogAppendTime) -> worker: fetch sent / answered (aiokafka's fetcher, consumer thread)
    -> records returned by aiokafka's getmany (consumer thread) -> batch handed to the
    worker (event loop) -> decided -> decisions handed to librdkafka -> decisions
    acknowledged -> batch durable (states acknowledged) -> reader receives the decision

The worker is traced by a ``sitecustomize`` on its ``PYTHONPATH`` that calls ``install``:
it wraps aiokafka's and Baton's functions in this process only (nothing in the library
changes). The relay stamps its fetch and flush itself when ``BENCH_STAGES`` is set. Both
sides' producers also report librdkafka's statistics (requests/s, queue wait, round trip), and
the worker's fetches are counted (a second, partitions each, answered when, answered only at
the fetch wait's end: Tansu answers at once when records are there, else at its next look, at
W/2, 3W/4, ... of the wait W once records came, or at its end; ``bench.tansu_fetch
--hold-probe``).

    python -m bench.latency_stages --seconds 8 --rate 2000
    python -m bench.latency_stages --sides relay,baton,baton:DIR    # DIR/baton: another checkout
    BENCH_PROFILE=/tmp/prof python -m bench.latency_stages --sides baton  # + cProfile per thread
    BENCH_STAGES_FLUSH=1 python -m bench.latency_stages   # experiment: flush the decisions
    BENCH_PRODUCER_CONF='{"linger.ms": 2}' python -m bench.latency_stages  # worker's producer

Every request of the phase is kept (no sampling): a phase of 16,000 requests writes ~2 MB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

now = time.perf_counter

_SITE = """import os, sys
sys.path.insert(0, {root!r})
if os.environ.get("BENCH_STAGES"):
    from bench.latency_stages import install
    install(os.environ["BENCH_STAGES"])
"""


def install(path: str) -> None:
    """Trace this worker process: append one JSON line per fetch, getmany and batch to ``path``."""
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    if os.environ.get("BENCH_PROFILE"):
        _profile_threads(os.environ["BENCH_PROFILE"])

    def emit(doc: dict[str, Any]) -> None:
        out.write(orjson.dumps(doc).decode() + "\n")

    from aiokafka.consumer import fetcher as fetcher_mod
    from faust.transport.drivers import aiokafka as faust_aiokafka

    from baton.processors import app as app_mod
    from baton.processors import batch as batch_mod
    from baton.processors import publish as publish_mod

    proc_fetch = fetcher_mod.Fetcher._proc_fetch_request

    async def traced_fetch(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
        t0 = now()
        result = await proc_fetch(self, assignment, node_id, request)
        tps = [[t, p, o] for t, parts in request.topics for p, o, _ in parts]
        emit({"k": "fetch", "t0": t0, "t1": now(), "tps": tps})
        return result

    fetcher_mod.Fetcher._proc_fetch_request = traced_fetch

    fetch_records = faust_aiokafka.AIOKafkaConsumerThread._fetch_records

    async def traced_records(self: Any, *args: Any, **kwargs: Any) -> Any:
        records = await fetch_records(self, *args, **kwargs)
        if records:
            ranges = [
                [tp.topic, tp.partition, rs[0].offset, rs[-1].offset] for tp, rs in records.items()
            ]
            emit({"k": "got", "t": now(), "ranges": ranges})
        return records

    faust_aiokafka.AIOKafkaConsumerThread._fetch_records = traced_records

    state: dict[str, Any] = {"cur": None, "pub": None}
    on_batch = app_mod.GovernanceWorker._on_fetched_batch

    async def traced_batch(self: Any, messages: list[Any], current: Any = None) -> None:
        rec = {
            "k": "batch",
            "in": now(),
            "recs": [[m.topic, m.partition, m.offset] for m in messages],
        }
        state["cur"] = rec
        await on_batch(self, messages, current)
        rec["returned"] = now()

    app_mod.GovernanceWorker._on_fetched_batch = traced_batch

    decide_and_publish = app_mod.GovernanceWorker._decide_and_publish

    async def traced_dp(self: Any, records: Any, *args: Any, **kwargs: Any) -> Any:
        rec = state["cur"] or {"k": "batch", "recs": []}
        rec["dp"] = now()
        durable = await decide_and_publish(self, records, *args, **kwargs)
        rec["handed"] = now()
        if durable is None:
            return durable

        def done(_f: Any) -> None:
            rec["durable"] = now()
            emit(rec)

        durable.add_done_callback(done)
        return durable

    app_mod.GovernanceWorker._decide_and_publish = traced_dp

    process = batch_mod.BatchProcessor.process

    def traced_process(self: Any, records: Any, when: Any) -> Any:
        rec = state["cur"]
        if rec is not None:
            rec["decide0"] = now()
        result = process(self, records, when)
        if rec is not None:
            rec["decided"] = now()
        return result

    batch_mod.BatchProcessor.process = traced_process

    _trace_publish(publish_mod.BatchPublisher, state)

    real_producer = publish_mod.Producer

    def stats_producer(conf: dict[str, Any]) -> Any:
        # librdkafka's own account of its produce path: queue, socket and broker round trip
        # BENCH_PRODUCER_CONF='{"linger.ms": 2}': an experiment on the worker's producer
        extra = orjson.loads(os.environ.get("BENCH_PRODUCER_CONF", "{}"))
        return real_producer(
            {**conf, **extra, "statistics.interval.ms": 1000, "stats_cb": _stats_writer(emit)}
        )

    publish_mod.Producer = stats_producer

    send = getattr(publish_mod.BatchPublisher, "_send", None)
    if send is not None:

        def traced_send(self: Any, *produce: Any) -> Any:
            future = send(self, *produce)
            rec = state["pub"]
            if rec is not None and "dec_sent" not in rec:
                rec["dec_sent"] = now()
                if os.environ.get("BENCH_STAGES_FLUSH"):  # experiment: wait for the acks here
                    self._producer.flush(30)
                    rec["flushed"] = now()
                future.add_done_callback(lambda _f: rec.__setitem__("acked", now()))
            return future

        publish_mod.BatchPublisher._send = traced_send

    _trace_aiokafka_publisher(state, emit)

    # the run states' group commit, in a checkout that has it (branch h8-group-commit)
    group_commit = getattr(publish_mod, "StateGroupCommit", None)
    if group_commit is not None:
        flush = group_commit._flush

        def traced_flush(self: Any) -> None:
            sends = self.sends
            flush(self)
            if self.sends != sends:
                emit({"k": "states", "t": now(), "sends": self.sends, "batches": self.batches})

        group_commit._flush = traced_flush


def _trace_publish(publisher: Any, state: dict[str, Any]) -> None:
    """Mark the batch being handed to ``publisher``'s producer while its decisions go out."""
    publish_first = publisher.publish_decisions_first

    async def traced_publish(self: Any, *args: Any, **kwargs: Any) -> Any:
        state["pub"] = state["cur"]
        try:
            return await publish_first(self, *args, **kwargs)
        finally:
            state["pub"] = None

    publisher.publish_decisions_first = traced_publish


def _trace_aiokafka_publisher(state: dict[str, Any], emit: Any) -> None:
    """The aiokafka publisher (BATON_WORKER_PRODUCER=aiokafka), in a checkout that has it: when
    a batch's decisions are acknowledged, and its sender's produce requests (a line a second)."""
    try:
        from aiokafka.producer import sender as sender_mod

        from baton.processors import publish_aiokafka as aio_mod
    except ImportError:
        return
    _trace_publish(aio_mod.AiokafkaPublisher, state)
    step_of = aio_mod.AiokafkaPublisher._step_of

    async def traced_step_of(self: Any, *produce: Any) -> Any:
        future = await step_of(self, *produce)
        rec = state["pub"]
        if rec is not None and "acked" not in rec:
            future.add_done_callback(lambda _f: rec.__setitem__("acked", now()))
        return future

    aio_mod.AiokafkaPublisher._step_of = traced_step_of
    counts = {"requests": 0, "msgs": 0, "last": now()}
    send_req = sender_mod.Sender._send_produce_req

    async def counted(self: Any, node_id: int, batches: dict[Any, Any]) -> None:
        counts["requests"] += 1
        counts["msgs"] += sum(b.record_count for b in batches.values())
        t0 = now()
        await send_req(self, node_id, batches)
        if t0 - counts["last"] >= 1.0:
            counts["last"] = t0
            emit({"k": "aiostats", "t": t0, "requests": counts["requests"], "msgs": counts["msgs"]})

    sender_mod.Sender._send_produce_req = counted


def _profile_threads(prefix: str) -> None:
    """cProfile every thread of this process; each thread's stats to PREFIX.<name> at exit."""
    import atexit
    import cProfile
    import threading

    profiles: dict[str, cProfile.Profile] = {}
    main = profiles["main"] = cProfile.Profile()
    main.enable()
    run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        prof = profiles[self.name] = cProfile.Profile()
        prof.enable()
        try:
            run(self)
        finally:
            prof.disable()
            prof.dump_stats(f"{prefix}.{self.name}")

    threading.Thread.run = profiled_run  # type: ignore[method-assign]

    def dump() -> None:
        main.disable()
        main.dump_stats(f"{prefix}.main")
        for name, prof in list(profiles.items()):
            if name != "main":
                prof.dump_stats(f"{prefix}.{name}")

    atexit.register(dump)


def _stats_writer(emit: Any) -> Any:
    """A librdkafka stats callback keeping what the produce path's latency is made of."""

    def on_stats(raw: str) -> None:
        doc = orjson.loads(raw)
        for b in doc["brokers"].values():
            if b.get("req", {}).get("Produce"):
                emit(
                    {
                        "k": "stats",
                        "name": doc.get("name", "?"),
                        "t": now(),
                        "produce_requests": b["req"]["Produce"],
                        "msgs": doc.get("txmsgs", 0),
                        **{f"{m}_us": b[m] for m in ("int_latency", "outbuf_latency", "rtt")},
                    }
                )

    return on_stats


def _print_fetches(fetches: list[dict[str, Any]], wait_ms: int) -> None:
    """The worker's fetches (aiokafka): how many a second, how wide, how long Tansu held them
    (Tansu answers at once when data is there, else at its next look: W/2, 3W/4, ... of the
    wait W, or its end)."""
    if len(fetches) < 20:
        return
    fetches = fetches[len(fetches) // 4 :]  # past the warm-up
    span = fetches[-1]["t1"] - fetches[0]["t0"]
    took = sorted((f["t1"] - f["t0"]) * 1e3 for f in fetches)
    held = sum(t >= wait_ms for t in took) / len(took)
    q = statistics.quantiles(took, n=10)
    print(
        f"  worker fetches: {len(fetches) / span:,.0f}/s, "
        f"{statistics.mean(len(f['tps']) for f in fetches):.1f} partitions each, "
        f"answered p50 {q[4]:.1f} ms p90 {q[8]:.1f} ms, {held:.0%} answered at the wait's end"
    )


def _print_stats(path: Path, seconds: float, wait_ms: int = 10) -> None:
    """Each producer's requests per second and its latencies (librdkafka stats, last window)."""
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    states: dict[str, Any] = {}
    batch_times: list[float] = []
    fetches: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        doc = orjson.loads(line)
        if doc.get("k") == "stats":
            by_name[doc["name"]].append(doc)
        elif doc.get("k") == "states":
            states = doc
        elif doc.get("k") == "batch" and "in" in doc:
            batch_times.append(doc["in"])
        elif doc.get("k") == "fetch":
            fetches.append(doc)
    _print_fetches(fetches, wait_ms)
    aio = [orjson.loads(line) for line in path.read_text().splitlines() if '"aiostats"' in line]
    if len(aio) >= 3:
        a, b = aio[max(0, len(aio) - 1 - int(seconds))], aio[-1]
        reqs = b["requests"] - a["requests"]
        print(
            f"  aiokafka producer: {reqs / (b['t'] - a['t']):,.0f} produce requests/s, "
            f"{(b['msgs'] - a['msgs']) / max(reqs, 1):.1f} records each"
        )
    if states:  # the run states' group commit (processors/publish_states.py)
        print(
            f"  run states: {states['sends']:,} sends for {states['batches']:,} batches "
            f"({states['batches'] / max(states['sends'], 1):.2f} batches a send)"
        )
    for name, rows in by_name.items():
        if len(rows) < 3:
            continue
        a, b = rows[max(0, len(rows) - 1 - int(seconds))], rows[-1]
        span = b["t"] - a["t"]
        reqs, msgs = b["produce_requests"] - a["produce_requests"], b["msgs"] - a["msgs"]
        batches = sum(a["t"] <= t < b["t"] for t in batch_times)
        per_batch = (
            f", {reqs / batches:.1f} a batch ({batches / span:,.0f} batches/s)" if batches else ""
        )
        print(
            f"  {name}: {reqs / span:,.0f} produce requests/s, "
            f"{msgs / max(reqs, 1):.1f} records each" + per_batch
        )
        for m in ("int_latency", "outbuf_latency", "rtt"):
            w = b[f"{m}_us"]
            print(f"    {m:<15} p50 {w['p50'] / 1e3:6.2f} ms  p99 {w['p99'] / 1e3:6.2f} ms")


# ---------------------------------------------------------------------------- analysis
def _worker_stages(path: Path) -> dict[tuple[str, int, int], dict[str, float]]:
    """(topic, partition, offset) -> stage -> time, from a worker's trace."""
    fetches: dict[tuple[str, int], list[tuple[int, float, float]]] = defaultdict(list)
    got: dict[tuple[str, int], list[tuple[int, int, float]]] = defaultdict(list)
    batches = []
    for line in path.read_text().splitlines():
        doc = orjson.loads(line)
        if doc["k"] == "fetch":
            for t, p, o in doc["tps"]:
                fetches[(t, p)].append((o, doc["t0"], doc["t1"]))
        elif doc["k"] == "got":
            for t, p, first, last in doc["ranges"]:
                got[(t, p)].append((first, last, doc["t"]))
        elif doc["k"] == "batch":
            batches.append(doc)
    stages: dict[tuple[str, int, int], dict[str, float]] = {}
    for b in batches:
        for t, p, o in b["recs"]:
            s = {
                k: b[k]
                for k in ("in", "dp", "decide0", "decided", "flushed", "handed", "acked", "durable")
                if k in b
            }
            for first, last, tg in got[(t, p)]:
                if first <= o <= last:
                    s["getmany"] = tg
                    break
            covering = [
                f for f in fetches[(t, p)] if f[0] <= o and f[2] <= s.get("getmany", b["in"])
            ]
            if covering:
                s["fetch_sent"], s["fetch_answered"] = covering[-1][1], covering[-1][2]
            stages[(t, p, o)] = s
    return stages


def _relay_stages(path: Path) -> dict[tuple[int, int], dict[str, float]]:
    out = {}
    for line in path.read_text().splitlines():
        doc = orjson.loads(line)
        if "k" in doc:  # the producer's statistics
            continue
        for p, o in doc["recs"]:
            out[(p, o)] = {"relay_got": doc["got"], "relay_flushed": doc["flushed"]}
    return out


_WORKER_ORDER = [
    ("client_ack", "client's delivery report (broker appended)"),
    ("fetch_sent", "worker: the fetch that brought it sent"),
    ("fetch_answered", "worker: that fetch answered (aiokafka parsed)"),
    ("getmany", "worker: returned by getmany (consumer thread)"),
    ("in", "worker: batch handed to the worker (event loop)"),
    ("decide0", "worker: deciding starts"),
    ("decided", "worker: decided"),
    ("flushed", "worker: decisions flushed (experiment)"),
    ("handed", "worker: decisions handed to the producer"),
    ("acked", "worker: decisions acknowledged"),
    ("durable", "worker: batch durable (states acknowledged)"),
    ("received", "reader received the decision"),
]
_RELAY_ORDER = [
    ("client_ack", "client's delivery report (broker appended)"),
    ("relay_got", "relay: fetched"),
    ("relay_flushed", "relay: flushed (re-produced, acknowledged)"),
    ("received", "reader received the copy"),
]


def _table(title: str, rows: list[dict[str, float]], order: list[tuple[str, str]]) -> None:
    print(f"\n{title}: {len(rows):,} requests; ms after the client's produce()")
    print(f"| {'stage':<50} | {'p50':>6} | {'p90':>6} | {'p99':>6} | {'step p50':>8} |")
    print(f"|{'-' * 52}|{'-' * 8}|{'-' * 8}|{'-' * 8}|{'-' * 10}|")
    prev = "sent"
    for key, name in order:
        have = [r for r in rows if key in r and prev in r]
        if len(have) < 20:
            continue
        since = sorted((r[key] - r["sent"]) * 1e3 for r in have)
        step = sorted((r[key] - r[prev]) * 1e3 for r in have)
        q = statistics.quantiles(since, n=100)
        print(
            f"| {name:<50} | {q[49]:>6.1f} | {q[89]:>6.1f} | {q[98]:>6.1f} "
            f"| {statistics.median(step):>8.1f} |"
        )
        prev = key


# ---------------------------------------------------------------------------- the run
def _traced_phase(bootstrap: str, side: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One phase of the latency bench, keeping every request's times and input position."""
    from bench import latency_bench as lb

    with side as (requests, answers, pid):
        reader = lb.Reader(bootstrap, [answers], args.fetch_wait_ms)
        producer = lb._ready_producer(
            {"bootstrap.servers": bootstrap, **lb._PRODUCER, "linger.ms": 0}
        )
        try:
            while lb.offer(producer, requests, reader, 200, 1.0, f"warm{uuid.uuid4().hex[:6]}"):
                reader.sent.clear()
            reader.received = {}
            rows: dict[str, dict[str, Any]] = {}
            procs = (pid, args.broker_pid or pid, os.getpid())
            threads0, queued0 = lb.thread_cpu_seconds(pid), [lb.run_queue_seconds(p) for p in procs]
            start = now()
            gen = lb._requests(uuid.uuid4().hex[:6])
            for i in range(int(args.rate * args.seconds)):
                target = start + i / args.rate
                while (t := now()) < target:
                    time.sleep(min(0.0005, target - t))
                rid, key, value = next(gen)
                row = rows[rid] = {"topic": requests, "sent": now()}
                reader.sent[rid] = row["sent"]

                def acked(err: Any, msg: Any, row: dict[str, Any] = row) -> None:
                    row.update(client_ack=now(), partition=msg.partition(), offset=msg.offset())

                producer.produce(requests, value, key, on_delivery=acked)
                producer.poll(0)
            threads1, queued1 = lb.thread_cpu_seconds(pid), [lb.run_queue_seconds(p) for p in procs]
            waits = (
                *lb.wait_split(pid, (queued0[0], queued1[0]), (threads0, threads1)),
                *(
                    sum(b.values()) - sum(a.values())
                    for a, b in zip(queued0[1:], queued1[1:], strict=True)
                ),
            )
            main, top, rest, broker, bench = (1e3 * w / args.seconds for w in waits)
            print(
                f"  waiting for a core, ms/s: side main {main:.0f} + busiest other {top:.0f} "
                f"+ rest {rest:.0f}, broker {broker:.0f}, client+reader {bench:.0f}"
            )
            producer.flush(10)
            reader.wait_answered(15)
            for rid, row in rows.items():
                if rid in reader.received:
                    row["received"] = reader.received[rid]
            return [r for r in rows.values() if "received" in r and "offset" in r]
        finally:
            reader.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--fetch-wait-ms", type=int, default=10)
    ap.add_argument("--guarantee", default="at_least_once")
    ap.add_argument(
        "--sides", default="relay,baton", help="relay, baton, baton:DIR (Baton from DIR/baton)"
    )
    args = ap.parse_args()

    from baton.streams.embedded import EmbeddedBroker
    from bench import latency_bench as lb

    root = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        site = Path(tmp) / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_SITE.format(root=root))
        os.environ["PYTHONPATH"] = str(site)
        args.broker_pid = broker._proc.pid if broker._proc is not None else None
        for r in range(args.rounds):
            for side in args.sides.split(","):
                trace = Path(tmp) / f"{side.replace('/', '_')}-{r}-{uuid.uuid4().hex[:6]}.jsonl"
                os.environ["BENCH_STAGES"] = str(trace)
                # "baton:DIR": a worker importing Baton from DIR (another checkout)
                other = side.split(":", 1)[1] if ":" in side else None
                path = f"{other}:{site}" if other else None
                ctx = (
                    lb.relay_side(broker.bootstrap, args)
                    if side == "relay"
                    else lb.baton_side(broker.bootstrap, args, Path(tmp), path)
                )
                print(f"round {r + 1}: {side} ...", file=sys.stderr)
                with lb.topics_dropped(broker.bootstrap):  # as latency_bench's phases
                    rows = _traced_phase(broker.bootstrap, ctx, args)
                os.environ.pop("BENCH_STAGES")
                if side == "relay":
                    by_input = _relay_stages(trace)
                    for row in rows:
                        row.update(by_input.get((row["partition"], row["offset"]), {}))
                    _table(f"round {r + 1}, bare relay", rows, _RELAY_ORDER)
                else:
                    by_input = _worker_stages(trace)
                    for row in rows:
                        key = (row["topic"], row["partition"], row["offset"])
                        row.update(by_input.get(key, {}))
                    _table(f"round {r + 1}, {side}", rows, _WORKER_ORDER)
                _print_stats(trace, args.seconds, args.fetch_wait_ms)


if __name__ == "__main__":
    main()
