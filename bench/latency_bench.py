"""Decision latency of one governance worker next to a bare Kafka relay, same broker, same run.

At a steady offered rate (default 2,000 events/s) the bench sends handoff requests and times
each one from ``produce()`` to the moment its answer is read back:

* **relay**: a plain confluent-kafka process that re-produces every record it reads and
  flushes once per fetch (no parsing, no state): the floor of any consume -> produce
  processor on this broker;
* **baton**: a real ``baton worker`` subprocess: the decision on ``gov.decisions``.

Both use the same fetch wait (``--fetch-wait-ms``, the worker's ``BATON_FETCH_MAX_WAIT_MS``),
the same producer settings and the same reader, and run in alternating phases (relay, baton,
relay, baton, ...) of ``--seconds`` each, so the machine's noise falls on both. The reader
returns a record as soon as it is fetched: ``poll(timeout)`` for the first, then
``consume(n, 0)`` for what that fetch already brought (``consume(n, t)`` would wait for ``n``
records or ``t`` seconds and add up to ``t`` to every latency).

Each side's row also says the CPU time its process (the relay or the worker) and the broker
used per event while the rate was offered (from /proc): on a busy host the latency is the
host's, the CPU per event much less so. A worker's is also split by thread: its event loop
(deciding, publishing, aiokafka's producer), Faust's consumer thread (aiokafka's fetches) and
the rest (the control follower, librdkafka's threads).

    python -m bench.latency_bench                       # 2,000 events/s, 3 rounds of 10 s
    python -m bench.latency_bench --rate 500 --rounds 2
    python -m bench.latency_bench --guarantee exactly_once
    python -m bench.latency_bench --sides relay,before,baton,baton:DIR --before-pythonpath B
        # B/baton and DIR/baton: other checkouts (variants) in the same run, alternating
    python -m bench.latency_bench --sides relay,producer:librdkafka,producer:aiokafka
        # this checkout's worker with each BATON_WORKER_PRODUCER, alternating
    python -m bench.latency_bench --sides relay,baton,env:BATON_CONSUMER_LOOP=inline
        # this checkout's worker, and the same with one setting changed
    python -m bench.latency_bench --sides relay,baton:DIR,env:BATON_CONSUMER_LOOP=inline@DIR
        # DIR/baton's worker, and the same with one setting changed
    python -m bench.latency_bench --sides relay,baton,rdk --rounds 4
        # and the prototype on librdkafka's receive path (bench/rdk_worker.py; rdk:DIR: DIR/baton)

Experiments on the relay (the figures in bench/RESULTS.md, 2026-11-29 night):
``BENCH_RELAY_BURN_US=180`` makes it spend that much CPU a record before re-producing it
(Baton's worker spends ~200 us an event); ``BENCH_RELAY_PAD_TO=1150`` pads its copies to a
decision's size. As sides of one run (each ratio is to the plain ``relay``):

    python -m bench.latency_bench --sides relay,relay:burn=80,relay:burn=180,relay:pad=1150,baton
    taskset -c 0 python -m bench.latency_bench --broker-cpu 1
        # the broker's threads on CPU 1, everything else on CPU 0 (informative only)
    python -m bench.latency_bench --idle --sides none,baton,env:BATON_FETCH_MAX_WAIT_MS=100
        # nothing offered: the broker's and the side's CPU a second while it only waits
        # (``none``: the broker alone)
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from baton.schemas.events import HandoffRequested
from baton.streams.embedded import EmbeddedBroker
from baton.streams.topics import TopicCatalog, ensure_topics
from bench.passthrough import _ready_producer
from bench.worker_bench import PARTITIONS, _p50_p99_ms, _start_worker, fetched

#: the relay's (and the worker's) producer settings that matter for latency
_PRODUCER = {
    "partitioner": "murmur2_random",
    "linger.ms": 5,
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "none",
}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time (user + system) each thread of the process ``pid`` has used so far."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = _task_cpu(task)
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return out


def _task_cpu(task: Path) -> float:
    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int, before: dict[int, float], after: dict[int, float]) -> tuple[float, ...]:
    """(main thread, the busiest other thread, the rest): CPU seconds between two
    ``thread_cpu_seconds``. For a worker: its event loop, Faust's consumer thread (aiokafka's
    fetches), everything else (the control follower, librdkafka's threads, executors)."""
    used = {t: after[t] - before.get(t, 0.0) for t in after}
    main = used.pop(pid, 0.0)
    others = sorted(used.values(), reverse=True)
    return main, others[0] if others else 0.0, sum(others[1:])


def compiled_loaded(pid: int) -> int:
    """How many of Baton's compiled modules (mypyc extensions, ``BATON_COMPILE=1``) the process
    ``pid`` has mapped: 0 for the interpreted build. A lower bound of those it runs: mypyc
    loads one shared library for all of them and maps a module's own file only where
    interpreted code imports it (a worker: 7 of the 18 its imports compile)."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    paths = {line.split()[-1] for line in maps if line.endswith(".so")}
    return sum("/baton/" in path for path in paths)


def run_queue_seconds(pid: int) -> dict[int, float]:
    """Seconds each thread of ``pid`` has spent runnable but waiting for a core so far (the
    second field of /proc/<pid>/task/<tid>/schedstat: the scheduler's run-queue delay)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[1]) / 1e9
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # a thread that ended meanwhile, or a kernel without schedstats
    return out


def wait_split(
    pid: int,
    waits: tuple[dict[int, float], dict[int, float]],
    cpu: tuple[dict[int, float], dict[int, float]],
) -> tuple[float, float, float]:
    """(main thread, the thread ``cpu_split`` calls the busiest, the rest): run-queue seconds
    between two ``run_queue_seconds``, the threads told apart by their CPU as ``cpu_split``
    does (for a worker: the event loop, Faust's consumer thread, everything else)."""
    before, after = waits
    used = {t: after[t] - before.get(t, 0.0) for t in after}
    main = used.pop(pid, 0.0)
    spent = {t: cpu[1][t] - cpu[0].get(t, 0.0) for t in cpu[1] if t != pid}
    busiest = max(spent, key=spent.__getitem__, default=None)
    top = used.pop(busiest, 0.0) if busiest is not None else 0.0
    return main, top, sum(used.values())


def _tail_consumer(bootstrap: str, topics: list[str], fetch_wait_ms: int) -> Consumer:
    """A consumer assigned to the end of every partition of ``topics`` (no group join)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"lat-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": fetch_wait_ms,
            "log_level": 0,
        }
    )
    tps = []
    for topic in topics:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        tps += [TopicPartition(topic, p, OFFSET_END) for p in meta.partitions]
    c.assign(tps)
    return c


def relay(bootstrap: str, src: str, dst: str, fetch_wait_ms: int) -> None:
    """Re-produce every record of ``src`` to ``dst`` (same key and partition), flushing once
    per fetch, until stdin closes."""
    consumer = _tail_consumer(bootstrap, [src], fetch_wait_ms)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    # bench/latency_stages.py: one line per fetch (its records, fetched and flushed when)
    stages = open(os.environ["BENCH_STAGES"], "a") if os.environ.get("BENCH_STAGES") else None  # noqa: SIM115
    extra: dict = {}
    if stages is not None:
        from bench.latency_stages import _stats_writer

        write = lambda doc: stages.write(orjson.dumps(doc).decode() + "\n")  # noqa: E731
        extra = {"statistics.interval.ms": 1000, "stats_cb": _stats_writer(write)}
    producer = Producer({"bootstrap.servers": bootstrap, **_PRODUCER, **extra})
    # experiment: the relay spends this much CPU a record before re-producing it (Baton's
    # worker spends ~200 us an event: is the host's CPU what separates the two?)
    burn_s = float(os.environ.get("BENCH_RELAY_BURN_US", "0")) / 1e6
    # experiment: the relay's copies padded to this many bytes (a decision is ~1.1 KB)
    pad = int(os.environ.get("BENCH_RELAY_PAD_TO", "0"))
    print("relay ready", flush=True)
    try:
        while not stop.is_set():
            batch = fetched(consumer, 0.2)
            got = time.perf_counter()
            if burn_s:
                until = time.thread_time() + burn_s * len(batch)
                while time.thread_time() < until:
                    pass
            for msg in batch:
                if msg.error() is None:
                    value = msg.value()
                    if pad > len(value):  # a JSON object stays one: a field of filler
                        value = value[:-1] + b',"pad":"' + b"x" * (pad - len(value) - 9) + b'"}'
                    producer.produce(dst, value, msg.key(), partition=msg.partition())
            if batch:
                producer.flush(30)
                if stages is not None:
                    recs = [[m.partition(), m.offset()] for m in batch if m.error() is None]
                    doc = {"got": got, "flushed": time.perf_counter(), "recs": recs}
                    stages.write(orjson.dumps(doc).decode() + "\n")
    finally:
        consumer.close()
        if stages is not None:
            stages.close()


def _start_relay(bootstrap: str, src: str, dst: str, fetch_wait_ms: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bench.latency_bench", "--relay", bootstrap, src, dst]
    proc = subprocess.Popen(
        [*cmd, "--fetch-wait-ms", str(fetch_wait_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"relay ready":
        raise SystemExit("the relay did not start")
    return proc


class Reader:
    """Reads answers (decisions, relayed requests) and records each one's latency."""

    def __init__(self, bootstrap: str, topics: list[str], fetch_wait_ms: int) -> None:
        self.sent: dict[str, float] = {}
        self.got: dict[str, list[float]] = {}
        #: seconds from a request's event_time to its decision's decided_at (decisions only)
        self.to_decided: list[float] = []
        #: request id -> when its answer was read (bench/latency_stages.py sets it)
        self.received: dict[str, float] | None = None
        self._consumer = _tail_consumer(bootstrap, topics, fetch_wait_ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        sent, got = self.sent, self.got
        while not self._stop.is_set():
            batch = fetched(self._consumer, 0.1)
            now = time.perf_counter()
            for msg in batch:
                if msg.error() is not None:
                    continue
                doc = orjson.loads(msg.value())
                t = sent.pop(doc["request_id"], None)
                if t is None:
                    continue
                got.setdefault(msg.topic(), []).append(now - t)
                if self.received is not None:
                    self.received[doc["request_id"]] = now
                if "decided_at" in doc:  # a decision: how much of it was before deciding
                    decided = datetime.fromisoformat(doc["decided_at"])
                    before = decided - datetime.fromisoformat(doc["event_time"])
                    self.to_decided.append(before.total_seconds())

    def wait_answered(self, timeout: float) -> int:
        """Wait until every request sent so far was answered; the number still unanswered."""
        deadline = time.monotonic() + timeout
        while self.sent and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.sent)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


def _requests(tag: str) -> Iterator[tuple[str, bytes, bytes]]:
    """(request id, key, value) of handoff requests, four per run, each to a new task."""
    i = 0
    while True:
        run = f"lat-{tag}-{i // 4}"
        rid = f"{tag}-{i}"
        event = HandoffRequested(
            request_id=rid,
            run_id=run,
            task_id=f"t{i}",
            from_agent="planner",
            to_agent="coder",
            event_time=datetime.now(UTC),
        )
        yield rid, run.encode(), event.to_json()
        i += 1


def offer(
    producer: Producer, topic: str, reader: Reader, rate: int, seconds: float, tag: str
) -> int:
    """Send ``rate`` requests a second for ``seconds`` to ``topic``; the number unanswered."""
    requests = _requests(tag)
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        target = start + i / rate
        while (now := time.perf_counter()) < target:
            time.sleep(min(0.0005, target - now))
        rid, key, value = next(requests)
        reader.sent[rid] = time.perf_counter()
        producer.produce(topic, value, key)
        producer.poll(0)
    producer.flush(10)
    return reader.wait_answered(15)


def _wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def _fresh_topics(bootstrap: str, *names: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in names]).values():
        future.result(10)


def topic_names(bootstrap: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


def drop_new_topics(bootstrap: str, before: set[str]) -> list[str]:
    """Delete the topics a phase made (every topic not in ``before`` but the broker's own,
    ``__``), once its process has stopped; the names deleted. Tansu's memory storage keeps
    every topic's records, and each phase's fetches and produces grew slower with what the
    earlier phases had left (both sides, the worker's more: session 49's p50 per round rose
    1.20 -> 1.36x within one run; session 50, same hour: 1.24x and 1.27x kept, 1.17-1.19x
    dropped)."""
    names = sorted(t for t in topic_names(bootstrap) - before if not t.startswith("__"))
    if names:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.delete_topics(names).values():
            future.result(10)
    return names


@contextmanager
def topics_dropped(bootstrap: str | None, keep: bool = False) -> Iterator[None]:
    """The topics the block makes deleted once it ends without an error (``drop_new_topics``;
    nothing with ``keep`` or no ``bootstrap``): wrap a phase's side in it, so its process has
    stopped first."""
    if not bootstrap or keep:
        yield
        return
    before = topic_names(bootstrap)
    yield
    drop_new_topics(bootstrap, before)


#: a relay side's settings (``relay:burn=80``, ``relay:pad=1150,burn=40``) -> its variables
_RELAY_SETTINGS = {"burn": "BENCH_RELAY_BURN_US", "pad": "BENCH_RELAY_PAD_TO"}


def relay_env(side: str) -> dict[str, str]:
    """The relay's environment for a side ``relay`` or ``relay:NAME=N[,NAME=N]``: a clear
    error for an unknown name or a value that is not a whole number >= 0."""
    _, _, settings = side.partition(":")
    env = dict.fromkeys(_RELAY_SETTINGS.values(), "0")
    for setting in filter(None, settings.split(",")):
        name, _, value = setting.partition("=")
        if name not in _RELAY_SETTINGS or not value.isdigit():
            raise SystemExit(
                f"side {side!r}: {setting!r} is not one of "
                + ", ".join(f"{n}=N" for n in _RELAY_SETTINGS)
                + " (N a whole number >= 0)"
            )
        env[_RELAY_SETTINGS[name]] = value
    return env


@contextmanager
def relay_side(
    bootstrap: str, args: argparse.Namespace, env: dict[str, str] | None = None
) -> Iterator[tuple[str, str, int]]:
    """A relay process on fresh topics: (where requests go, where answers come from, its
    pid). ``env``: its BENCH_RELAY_* settings (``relay_env``)."""
    prefix = f"relay{uuid.uuid4().hex[:6]}."
    src, dst = f"{prefix}in", f"{prefix}out"
    _fresh_topics(bootstrap, src, dst)
    with _environ(env or {}):
        proc = _start_relay(bootstrap, src, dst, args.fetch_wait_ms)
    try:
        yield src, dst, proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


@contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """This process's environment with ``extra`` set (what a child started meanwhile gets),
    as it was again afterwards."""
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def baton_side(
    bootstrap: str,
    args: argparse.Namespace,
    workdir: Path,
    pythonpath: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, str, int]]:
    """A ``baton worker`` process on fresh topics: (requests topic, decisions topic, pid).

    ``pythonpath``: the worker imports Baton from there (another checkout: before/after);
    ``env``: more of its environment (a setting's variant, e.g. BATON_WORKER_PRODUCER=
    librdkafka or BATON_CONSUMER_LOOP=inline)."""
    prefix = f"lat{uuid.uuid4().hex[:6]}."
    catalog = TopicCatalog(prefix=prefix, partitions=PARTITIONS, replication=1)
    ensure_topics({"bootstrap.servers": bootstrap}, catalog, timeout=10)
    os.environ["BATON_FETCH_MAX_WAIT_MS"] = str(args.fetch_wait_ms)
    (workdir / prefix).mkdir()
    extra = {**(env or {}), **({"PYTHONPATH": pythonpath} if pythonpath is not None else {})}
    with _environ(extra):
        worker = _start_worker(bootstrap, prefix, workdir / prefix, args.guarantee)
    log_path = workdir / prefix / f"worker-{args.guarantee}.log"
    try:
        _wait_for("the worker", lambda: " ready (policy" in log_path.read_text(), 120)
        yield catalog.requests, catalog.decisions, worker.pid
        # which build the worker ran: its compiled Baton modules, as the process maps them
        # (after the phase: the engine's modules are imported at the first batch)
        print(f"  worker: {compiled_loaded(worker.pid)} compiled baton modules", file=sys.stderr)
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(30)
        for line in log_path.read_text(errors="replace").splitlines():
            if "events in" in line:  # the worker's own account: batches, decide/publish time
                print("  " + line.split("] ", 3)[-1], file=sys.stderr)


def phase(
    bootstrap: str,
    side: AbstractContextManager[tuple[str, str, int]],
    args: argparse.Namespace,
    broker_pid: int | None,
) -> tuple[list[float], list[float], tuple[float, ...]]:
    """Latencies of one phase (fresh topics and process, warm-up, then the offered rate), for
    decisions the part up to ``decided_at``, and the CPU seconds the side's process and the
    broker used while the rate was offered, then the process's by thread (``cpu_split``)."""
    # fresh topics every phase: on Tansu's memory storage a fetch slows down as a partition's
    # log grows (the relay alone went from p50 18 to 96 ms over 25 s on one pair of topics)
    keep = getattr(args, "keep_topics", False)
    with topics_dropped(bootstrap, keep), side as (requests, answers, pid):
        reader = Reader(bootstrap, [answers], args.fetch_wait_ms)
        # one producer per phase, its producer id assigned before the clock runs (a fresh
        # idempotent producer holds its records ~0.5 s: that would be every p99)
        producer = _ready_producer({"bootstrap.servers": bootstrap, **_PRODUCER, "linger.ms": 0})
        try:
            while offer(producer, requests, reader, 200, 1.0, f"warm{uuid.uuid4().hex[:6]}"):
                reader.sent.clear()  # the worker still joining its group: again
            reader.got.clear()
            reader.to_decided.clear()
            cpu0 = cpu_seconds(pid), cpu_seconds(broker_pid) if broker_pid else 0.0
            threads0 = thread_cpu_seconds(pid)
            # run-queue waits: the side's threads, the broker's, this process's (client + reader)
            queued0 = [run_queue_seconds(p) for p in (pid, broker_pid or pid, os.getpid())]
            missing = offer(
                producer, requests, reader, args.rate, args.seconds, uuid.uuid4().hex[:6]
            )
            threads1 = thread_cpu_seconds(pid)
            queued1 = [run_queue_seconds(p) for p in (pid, broker_pid or pid, os.getpid())]
            cpu = (
                cpu_seconds(pid) - cpu0[0],
                (cpu_seconds(broker_pid) - cpu0[1]) if broker_pid else 0.0,
                *cpu_split(pid, threads0, threads1),
                *wait_split(pid, (queued0[0], queued1[0]), (threads0, threads1)),
                *(
                    sum(b.values()) - sum(a.values())
                    for a, b in zip(queued0[1:], queued1[1:], strict=True)
                ),
            )
            if missing:
                raise SystemExit(f"{missing} requests unanswered after 15 s")
            return reader.got.pop(answers, []), reader.to_decided, cpu
        finally:
            reader.close()


@contextmanager
def no_side() -> Iterator[tuple[str, str, int]]:
    """Side ``none`` of an idle run: nothing connected (its pid: this process, not counted)."""
    yield "", "", 0


def idle_phase(
    side: AbstractContextManager[tuple[str, str, int]],
    args: argparse.Namespace,
    broker_pid: int | None,
    settle_s: float = 3.0,
    bootstrap: str | None = None,
) -> tuple[float, float]:
    """CPU seconds a second of the broker and of the side's process while nothing is offered
    (after ``settle_s`` to settle: a worker's group join, a relay's first fetches); with
    ``bootstrap``, the phase's topics deleted afterwards, as ``phase`` does."""
    keep = getattr(args, "keep_topics", False)
    with topics_dropped(bootstrap, keep), side as (_requests, _answers, pid):
        time.sleep(settle_s)
        own0 = cpu_seconds(pid) if pid else 0.0
        broker0 = cpu_seconds(broker_pid) if broker_pid else 0.0
        time.sleep(args.seconds)
        own = (cpu_seconds(pid) - own0) if pid else 0.0
        broker = (cpu_seconds(broker_pid) - broker0) if broker_pid else 0.0
    return broker / args.seconds, own / args.seconds


def _report_idle(idle: dict[str, list[tuple[float, float]]]) -> None:
    print(
        f"\nmachine: {platform.node()}, {os.cpu_count()} cores, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print("nothing offered: CPU ms a second, per round (alternating)\n")
    print("| side | broker CPU ms/s | the side's CPU ms/s |\n|---|---|---|")
    for side, rounds in idle.items():
        broker = " · ".join(f"{1e3 * b:.1f}" for b, _ in rounds)
        own = " · ".join(f"{1e3 * o:.1f}" for _, o in rounds)
        print(f"| {side} | {broker} | {own} |")


def measure(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_dir=tmp) as broker:
        bootstrap, workdir = broker.bootstrap, Path(tmp)
        # the broker's pid, for its CPU column (EmbeddedBroker keeps its process private)
        broker_pid = broker._proc.pid if broker._proc is not None else None
        if args.broker_cpu is not None and broker_pid is not None:
            pin_threads(broker_pid, {args.broker_cpu})
        sides = {
            "none": no_side,
            "relay": lambda: relay_side(bootstrap, args),
            "baton": lambda: baton_side(bootstrap, args, workdir),
            "before": lambda: baton_side(bootstrap, args, workdir, args.before_pythonpath),
        }
        for side in args.sides.split(","):
            if side == "relay" or side.startswith("relay:"):  # relay:burn=N,pad=N
                relay_vars = relay_env(side)
                sides[side] = lambda e=relay_vars: relay_side(bootstrap, args, e)
            if side.split("@")[0] == "rdk" or side.startswith("rdk:"):
                # bench/rdk_worker.py: rdk[:DIR][@NAME=VALUE,...] (DIR/baton; its variants)
                from bench.rdk_worker import rdk_side

                base, _, settings = side.partition("@")
                rdk_dir = base.split(":", 1)[1] if ":" in base else None
                rdk_env = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
                sides[side] = lambda d=rdk_dir, e=rdk_env: rdk_side(bootstrap, args, workdir, d, e)
            if side.startswith("baton:"):  # a worker importing Baton from another checkout
                path = side.split(":", 1)[1]
                sides[side] = lambda path=path: baton_side(bootstrap, args, workdir, path)
            env = None
            if side.startswith("producer:"):  # this checkout, BATON_WORKER_PRODUCER=NAME
                env = {"BATON_WORKER_PRODUCER": side.split(":", 1)[1]}
            where = None
            if side.startswith("env:"):  # this checkout's worker with NAME=VALUE set
                setting, _, where = side.split(":", 1)[1].partition("@")  # @DIR: DIR/baton's
                name, _, value = setting.partition("=")
                env = {name: value}
            if env is not None:
                sides[side] = lambda env=env, where=where: baton_side(
                    bootstrap, args, workdir, where or None, env=env
                )
        if args.idle:
            idle: dict[str, list[tuple[float, float]]] = {s: [] for s in args.sides.split(",")}
            for r in range(args.rounds):
                for side in idle:
                    print(f"round {r + 1}: {side}, idle ...", file=sys.stderr)
                    idle[side].append(
                        idle_phase(sides[side](), args, broker_pid, bootstrap=bootstrap)
                    )
            _report_idle(idle)
            return
        rounds: dict[str, list[list[float]]] = {side: [] for side in args.sides.split(",")}
        cpu: dict[str, list[tuple[float, ...]]] = {side: [] for side in rounds}
        to_decided: dict[str, list[float]] = {side: [] for side in rounds}
        for r in range(args.rounds):
            for side in rounds:
                print(f"round {r + 1}: {side} at {args.rate:,}/s ...", file=sys.stderr)
                latencies, before, used = phase(bootstrap, sides[side](), args, broker_pid)
                rounds[side].append(latencies)
                cpu[side].append(used)
                to_decided[side] += before
        _report(args, rounds, to_decided, cpu)


def _report(
    args: argparse.Namespace,
    rounds: dict[str, list[list[float]]],
    to_decided: dict[str, list[float]],
    cpu: dict[str, list[tuple[float, ...]]],
) -> None:
    print(
        f"\nmachine: {platform.node()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"offered {args.rate:,} events/s, {args.rounds} rounds of {args.seconds:g} s per side "
        f"(alternating), {PARTITIONS} partitions, fetch wait {args.fetch_wait_ms} ms, "
        f"worker {args.guarantee}\n"
    )
    print(
        f"| {'side':<36} | {'samples':>7} | {'p50 ms':>7} | {'p99 ms':>7} "
        f"| {'CPU us/event':>12} | {'broker CPU us/event':>19} |"
    )
    print(f"|{'-' * 38}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 14}|{'-' * 21}|")
    pooled = {}
    for side, samples in rounds.items():
        every = [s for one in samples for s in one]
        pooled[side] = _p50_p99_ms(every)
        per_round = " · ".join(f"{_p50_p99_ms(one)[0]:.1f}" for one in samples)
        name = {
            "relay": "bare relay (flush per fetch)",
            **({side: f"bare relay, {side[6:]}"[:36]} if side.startswith("relay:") else {}),
            "baton": "baton worker",
            "before": "baton worker (--before-pythonpath)",
        }.get(side, f"baton worker, {side}"[:36] if side.startswith("producer:") else None)
        if side.split("@")[0] == "rdk" or side.startswith("rdk:"):
            name = (
                ("rdk " + side[3:].replace("BENCH_RDK_", ""))[:36]
                if side[3:]
                else "librdkafka worker"
            )
        name = name or f"baton worker from {side.split(':', 1)[-1]}"[:36]
        events = args.rate * args.seconds * len(samples)
        own = 1e6 * sum(c[0] for c in cpu[side]) / events
        broker = 1e6 * sum(c[1] for c in cpu[side]) / events
        print(
            f"| {name:<36} | {len(every):>7,} | {pooled[side][0]:>7.1f} | {pooled[side][1]:>7.1f} "
            f"| {own:>12.0f} | {broker:>19.0f} |"
        )
        print(
            f"|   p50 per round: {per_round:<19} | {'':>7} | {'':>7} | {'':>7} | {'':>12} "
            f"| {'':>19} |"
        )
        if to_decided.get(side):  # a worker side: how much was before its decision
            p50, p99 = _p50_p99_ms(to_decided[side])
            print(
                f"| {'  of it: produce -> decided_at':<36} | {'':>7} | {p50:>7.1f} | {p99:>7.1f} "
                f"| {'':>12} | {'':>19} |"
            )
            # its CPU by thread: the event loop (deciding, publishing), Faust's consumer
            # thread (aiokafka's fetches), the rest
            loop, fetching, rest = (1e6 * sum(c[i] for c in cpu[side]) / events for i in (2, 3, 4))
            split = f"{loop:.0f} + {fetching:.0f} + {rest:.0f}"
            print(
                f"| {'  CPU: loop + consumer thread + rest':<36} | {'':>7} | {'':>7} | {'':>7} "
                f"| {split:>12} | {'':>19} |"
            )
        _print_waits(side, cpu[side], args.seconds * len(samples))
    if "relay" not in pooled:
        return
    r50, r99 = pooled["relay"]
    print()
    for side in pooled:
        if side != "relay":
            b50, b99 = pooled[side]
            print(f"{side} / relay: p50 {b50 / r50:.2f}x, p99 {b99 / r99:.2f}x (target <= 1.25x)")


def _print_waits(side: str, cpu: list[tuple[float, ...]], seconds: float) -> None:
    """The phase's run-queue waits, ms a second: time runnable but waiting for a core (the
    side's main thread, its busiest other, its rest; the broker; the bench's client and reader)."""
    if not cpu or len(cpu[0]) < 10:
        return
    loop, top, rest, broker, bench = (1e3 * sum(c[i] for c in cpu) / seconds for i in range(5, 10))
    print(
        f"|   waiting for a core, ms/s: {'relay' if side.startswith('relay') else 'worker'} main "
        f"{loop:.0f} + {top:.0f} + {rest:.0f}, broker {broker:.0f}, client+reader {bench:.0f}"
    )


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` (threads it starts later inherit it) allowed only ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=int, default=2000, help="events/s offered")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of one phase")
    ap.add_argument("--rounds", type=int, default=3, help="relay+baton phase pairs")
    ap.add_argument("--fetch-wait-ms", type=int, default=10)
    ap.add_argument(
        "--guarantee", choices=["at_least_once", "exactly_once"], default="at_least_once"
    )
    ap.add_argument(
        "--sides",
        default="relay,baton",
        help="which sides, in phase order (relay, baton, before, baton:DIR for a worker "
        "importing Baton from DIR/baton)",
    )
    ap.add_argument(
        "--before-pythonpath",
        help="side 'before': a worker importing Baton from this PYTHONPATH (paired runs)",
    )
    ap.add_argument(
        "--broker-cpu",
        type=int,
        help="pin the broker's threads to this CPU (run the bench itself under taskset on "
        "another: an informative figure with the broker on its own core)",
    )
    ap.add_argument(
        "--idle",
        action="store_true",
        help="offer nothing: each side's and the broker's CPU a second while it waits",
    )
    ap.add_argument(
        "--keep-topics",
        action="store_true",
        help="leave each phase's topics on the broker (before session 50: later phases ran "
        "slower, on a broker holding every earlier phase's records)",
    )
    ap.add_argument("--relay", nargs=3, metavar=("BOOTSTRAP", "SRC", "DST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.relay:
        relay(*args.relay, args.fetch_wait_ms)
    else:
        measure(args)


if __name__ == "__main__":
    main()
