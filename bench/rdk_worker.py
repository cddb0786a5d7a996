"""Prototype (a measurement, not a product): a governance worker on librdkafka's receive path.

Issue 15 asks decision latency within 1.25x of a bare relay at 2,000 events/s. The real worker
receives through Faust and aiokafka (processors/faust_adapter.py, processors/app.py) and spends
~230 us of CPU an event, ~60 of them in Faust's consumer thread; session 15 measured that a
consume -> produce process stays within 1.25x only at <= ~50-80 us. This process keeps Baton's
own hot path and swaps the receive path for librdkafka's, like the bench's relay:

* one confluent-kafka ``Consumer`` in the worker's group (``enable.auto.commit`` off, fetch wait
  ``BATON_FETCH_MAX_WAIT_MS``, ``read_committed``, ``earliest``) on gov.handoff.requests and
  gov.approvals; each fetch is one batch: ``poll(timeout)`` for the first record, then
  ``consume(n, 0)`` for what the same fetch brought (never a waiting ``consume``);
* the batch through Baton's Faust-agnostic step, ``BatchProcessor.process`` (parse, route,
  decide, chain links, state budget, encoded states), built as processors/app.py builds it;
* published with Baton's librdkafka publisher (processors/publish.py ``BatchPublisher``,
  pipelined at-least-once: decisions, then run states once those are acknowledged,
  processors/publish_order.py; with ``BATON_PROCESSING_GUARANTEE=exactly_once`` one
  transaction a batch with its input offsets and the consumer's group metadata);
* the per-batch bookkeeping the worker does: the decided positions, the sweep's due index
  (``DueIndex.touch`` per changed run), ``WorkerMetrics.batch`` (events by topic, latency
  histogram, decisions by outcome), ``BatchStats``; the generation check before the states;
* offsets committed asynchronously once a batch is durable (its states acknowledged), the
  highest durable offset a partition, at most every ``_COMMIT_S`` (Faust's committer, which
  the worker relies on, commits every 2.8 s; ``BENCH_RDK_COMMIT_S=0``: after every batch).

Run states live in one plain dict (the processor's ``states``); a revoked partition's runs are
dropped from it by their key's partition. What it skips, and what each would cost on the hot
path (estimates, per event unless said):

* **rebalance recovery** (read the changelog of an assigned partition into the dict before
  deciding it): nothing per event; a pause at each assignment (the fresh topics here have no
  history). The real one needs the assigned partitions paused until their changelog is read
  to its committed end (the ``committed_ends`` of streams/transactions.py);
* **the sweep** (TTLs, idle runs held, tombstones, every second): nothing per event beyond
  ``DueIndex.touch``, which is kept; its 1 s step costs the same as the worker's;
* **the control follower** (kill switches, policy; a thread reading gov.control): its per-batch
  cost is a freshness check (``wait_until_fresh``: a comparison, < 1 us a batch) and reading
  ``control.kills``; its thread costs ~1-2 ms of CPU a second while idle (librdkafka's fetch
  of one topic), i.e. ~1 us an event at 2,000/s;
* **fencing beyond the generation**: the worker compares aiokafka's generation before the
  states (kept here: librdkafka's assignment counter), and under exactly-once builds the
  group metadata per batch (kept: ``consumer_group_metadata()``, one call a batch);
* **Faust's table and store**: the worker's ``RunStore`` is a Python ``MutableMapping``
  (``get`` and ``__setitem__`` in Python, ~0.3-0.5 us a call, two or three a run a batch);
  a plain dict is what a librdkafka worker would hold anyway;
* the metrics HTTP server, the reply spill's file (kept when ``BATON_SPILL_REPLIES`` is on,
  the default: the worker's setting is applied here too), the GC settings (the worker's).

    python -m bench.latency_bench --sides relay,baton,rdk --rounds 4
    python -m bench.latency_bench --sides relay,baton:DIR,rdk:DIR    # DIR/baton: compiled core
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.batch_stats import BatchStats
from baton.processors.engine import NO_KILLS
from baton.processors.metrics import WorkerMetrics
from baton.processors.publish import BatchPublisher
from baton.processors.recorded import policy_in_force
from baton.processors.sweep import DueIndex
from baton.schemas.settings import Settings
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog

log = logging.getLogger("baton.processors.app")

#: at most this often an asynchronous offset commit (Faust's broker_commit_interval: 2.8 s)
_COMMIT_S = float(os.environ.get("BENCH_RDK_COMMIT_S", "2.8"))
#: the longest the loop blocks in the consumer's poll: the publisher's delivery-report timer
#: (10 ms) and the commit run on the same loop between polls
_POLL_S = 0.01
#: batches decided whose outputs are not yet durable, at most (processors/app.py's)
_MAX_BATCHES_IN_FLIGHT = 64
#: one fetch's records, at most (the worker's ``BATON_BATCH_SIZE`` bounds Faust's getmany)
_MAX_BATCH = 10_000
#: variants (bench/latency_bench.py's ``rdk@NAME=VALUE``): the publisher, ``librdkafka``
#: (processors/publish.py, the default) or ``aiokafka`` (processors/publish_aiokafka.py, on
#: this loop: the poll then blocks 1 ms at most while batches are in flight); librdkafka's
#: linger.ms for the librdkafka publisher (its default: 0)
_PRODUCER = os.environ.get("BENCH_RDK_PRODUCER", "librdkafka")
_LINGER = (
    {"linger.ms": int(os.environ["BENCH_RDK_LINGER_MS"])}
    if os.environ.get("BENCH_RDK_LINGER_MS")
    else {}
)


def _record(m: Any) -> InputRecord:
    """The batch step's view of a librdkafka message (its stamp in seconds, as Faust gives)."""
    kind, ms = m.timestamp()
    stamp = ms / 1000 if kind != TIMESTAMP_NOT_AVAILABLE else None
    return InputRecord(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers(), stamp)


_REST = "the loop's rest (sleep(0), callbacks, timers, commits, idle polls)"


class CpuSplit:
    """The main thread's CPU time by step (``time.thread_time`` between marks): what was spent
    since the last mark is charged to the step named; the rest is the loop's own."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.events = 0
        self._last = time.thread_time()

    def mark(self, step: str) -> None:
        now = time.thread_time()
        self.spent[step] = self.spent.get(step, 0.0) + now - self._last
        self._last = now

    def report(self) -> str:
        self.mark(_REST)
        n = max(self.events, 1)
        total = sum(self.spent.values())
        rows = [f"{1e6 * v / n:6.1f} us/event  {k}" for k, v in self.spent.items()]
        return f"CPU split over {n} events, {1e6 * total / n:.1f} us/event:\n  " + "\n  ".join(rows)


class RdkWorker:
    """One process: librdkafka's consumer -> ``BatchProcessor`` -> ``BatchPublisher``."""

    def __init__(self, settings: Settings, changelog: str) -> None:
        s = self.settings = settings
        self.worker_id = f"rdk-{socket.gethostname()}:{os.getpid()}"
        self.catalog = TopicCatalog(
            prefix=s.topic_prefix, partitions=s.partitions, replication=s.replication_factor
        )
        self.exactly_once = s.processing_guarantee == "exactly_once"
        self.consumer = Consumer(
            {
                **s.kafka_config(),
                "group.id": s.app_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": s.fetch_max_wait_ms,
                "session.timeout.ms": int(s.session_timeout_s * 1000),
                "heartbeat.interval.ms": int(max(s.session_timeout_s / 6, 0.5) * 1000),
                "log_level": 3,
            }
        )
        topics = {
            "decisions_topic": self.catalog.decisions,
            "stops_topic": self.catalog.stops,
            "deadletter_topic": self.catalog.deadletter,
            "changelog_topic": changelog,
        }
        #: a variant: aiokafka's publisher on this loop (one request per broker and step)
        self.aiokafka = _PRODUCER == "aiokafka" and not self.exactly_once
        self.publisher: Any
        if self.aiokafka:
            from baton.processors.publish_aiokafka import AiokafkaPublisher
            from baton.processors.publish_select import aiokafka_options

            self.publisher = AiokafkaPublisher(aiokafka_options(s), **topics)
        else:
            self.publisher = BatchPublisher(
                {**s.kafka_config(), **_LINGER},
                **topics,
                transactional_id=f"{s.app_id}-rdk-{os.getpid()}" if self.exactly_once else None,
                transaction_timeout_ms=s.transaction_timeout_ms,
            )
        self.policy = _policy(s)
        #: every run's state (all assigned partitions): the processor's mapping
        self.states: dict[bytes, Any] = {}
        self.processor = BatchProcessor(
            self.policy,
            s.partitions,
            self.states,
            worker=self.worker_id,
            kills=lambda: NO_KILLS,
            exactly_once=self.exactly_once,
            run_state_max_bytes=s.run_state_max_bytes,
            max_runs=s.max_runs,
            approvals_topic=self.catalog.approvals,
            max_state_bytes=s.max_state_bytes,
            chain_key=(s.audit_chain_key.get_secret_value().encode() if s.audit_chain_key else b""),
        )
        self.metrics = WorkerMetrics(self.worker_id)
        self._stats = BatchStats(self.worker_id)
        self._due = DueIndex(s.run_retention_s, s.tombstone_retention_s, s.hold_idle_s)
        #: (topic, partition) -> fetch position once every record before it was decided
        self._decided: dict[tuple[str, int], int] = {}
        #: (topic, partition) -> next offset, durable and not yet committed
        self._to_commit: dict[tuple[str, int], int] = {}
        self._committed_at = time.monotonic()
        self._acking: set[asyncio.Future[None]] = set()
        #: BENCH_RDK_SPLIT=1: the main thread's CPU by step (``CpuSplit``), logged at the end
        self.split = CpuSplit() if os.environ.get("BENCH_RDK_SPLIT") else None
        #: bumped at every assignment and revocation: a batch fetched in another generation
        #: does not write its states (processors/fencing.py's check)
        self.generation = 0
        self._stop = False

    # ------------------------------------------------------------------ group
    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.generation += 1
        log.info("worker %s assigned %d partitions", self.worker_id, len(partitions))

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # the prototype's revocation: outputs delivered, durable offsets committed, the
        # partitions' runs forgotten (a real worker would restore them from the changelog)
        self.generation += 1
        if not self.aiokafka:
            self.publisher._producer.flush(30)
        self._commit(force=True, asynchronous=False)
        gone = {tp.partition for tp in partitions if tp.topic == self.catalog.requests}
        n = self.settings.partitions
        for key in [k for k in self.states if partition_for(k, n) in gone]:
            del self.states[key]
        for tp in partitions:
            self._decided.pop((tp.topic, tp.partition), None)

    def _commit(self, force: bool = False, asynchronous: bool = True) -> None:
        if not self._to_commit or (not force and time.monotonic() - self._committed_at < _COMMIT_S):
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._to_commit.items()]
        self._to_commit = {}
        self._committed_at = time.monotonic()
        try:
            self.consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except Exception as exc:  # the prototype: a failed commit redelivers, it never stops
            log.warning("commit failed: %s", exc)

    # ------------------------------------------------------------------ hot path
    async def run(self) -> None:
        s = self.settings
        self.consumer.subscribe(
            [self.catalog.requests, self.catalog.approvals],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )
        await self.publisher.start()
        self.publisher.enqueue(policy_in_force(self.policy, datetime.now(UTC), self.worker_id))
        log.info("worker %s ready (policy %s)", self.worker_id, self.policy.version)
        consumer = self.consumer
        aio = self.aiokafka
        split = self.split
        while not self._stop:
            if split is not None:
                split.mark(_REST)
            first = consumer.poll(0.001 if aio and self._acking else _POLL_S)
            if first is not None:
                messages = [first, *consumer.consume(min(s.batch_size, _MAX_BATCH) - 1, 0)]
                if split is not None:
                    split.mark("fetch (poll + consume)")
                await self._on_batch(messages)
            self._commit()
            await asyncio.sleep(0)  # the publisher's timers and the batches' state steps
            if aio:  # aiokafka's sender: woken, its request made, written
                await asyncio.sleep(0)
                await asyncio.sleep(0)
        await asyncio.gather(*self._acking, return_exceptions=True)
        self._commit(force=True, asynchronous=False)
        consumer.close()

    async def _on_batch(self, messages: list[Any]) -> None:
        split = self.split
        records = [_record(m) for m in messages if m.error() is None]
        for m in messages:
            if m.error() is not None:
                log.warning("fetch error: %s", m.error())
        if not records:
            return
        while len(self._acking) >= _MAX_BATCHES_IN_FLIGHT:
            await asyncio.wait(self._acking, return_when=asyncio.FIRST_COMPLETED)
        generation = self.generation
        if split is not None:
            split.events += len(records)
            split.mark("InputRecord from librdkafka's message")
        t0 = time.perf_counter()
        out = self.processor.process(records, datetime.now(UTC))
        t1 = time.perf_counter()
        if split is not None:
            split.mark("BatchProcessor.process")
        ends: dict[tuple[str, int], int] = {}
        for rec in records:
            tp = (rec.topic, rec.partition)
            if rec.offset >= ends.get(tp, -1):
                ends[tp] = rec.offset + 1
        self._decided.update(ends)
        durable = await self.publisher.publish_decisions_first(
            out,
            before_state=lambda: self._still_owner(generation),
            offsets=[(t, p, o) for (t, p), o in ends.items()] if self.exactly_once else (),
            group_metadata=self.consumer.consumer_group_metadata if self.exactly_once else None,
        )
        if split is not None:
            split.mark("publish_decisions_first")
        due = self._due
        for key, (_partition, state) in out.changed.items():
            due.touch(key, state)
        t2 = time.perf_counter()
        self._stats.add(len(records), t1 - t0, t2 - t1)
        self.metrics.batch(records, out, t2 - t0)
        if split is not None:
            split.mark("due index, metrics, stats")
        if durable.done():
            self._durable(ends, durable)
        else:
            self._acking.add(durable)
            durable.add_done_callback(lambda done: self._durable(ends, done))

    def _still_owner(self, generation: int) -> None:
        if generation != self.generation:
            raise RuntimeError(f"assignment changed ({generation} -> {self.generation})")

    def _durable(self, ends: dict[tuple[str, int], int], durable: asyncio.Future[None]) -> None:
        self._acking.discard(durable)
        if durable.cancelled():
            return
        if durable.exception() is not None:
            log.error("a batch's outputs were not delivered (%s): exiting", durable.exception())
            os._exit(75)
        if not self.exactly_once:  # (exactly-once: the transaction committed them)
            self._to_commit.update(ends)

    def stop(self) -> None:
        self._stop = True


def _policy(s: Settings) -> Any:
    from baton.cli.options import read_policy

    return read_policy(s.policy)


def changelog_topic(s: Settings) -> str:
    return f"{s.app_id}-runs-changelog"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(message)s")
    settings = Settings()
    from baton.cli.worker_cmd import create_topics, spill_replies

    spill_replies(settings)
    create_topics(settings)
    changelog = changelog_topic(settings)
    admin = AdminClient(settings.kafka_config())
    spec = NewTopic(
        changelog,
        settings.partitions,
        settings.replication_factor,
        config={"cleanup.policy": "compact"},
    )
    for future in admin.create_topics([spec]).values():
        try:
            future.result()
        except Exception as exc:  # already there: a restart of the same app id
            log.info("changelog: %s", exc)
    gc.set_threshold(100_000, 50, 100)
    worker = RdkWorker(settings, changelog)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGINT, worker.stop)
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    profile = os.environ.get("BENCH_RDK_PROFILE")  # cProfile's stats of the run to this file
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    loop.run_until_complete(worker.run())
    if profile:
        prof.disable()
        prof.dump_stats(profile)
    if worker.split is not None:
        log.info("worker %s: %s", worker.worker_id, worker.split.report())
    # what the worker's log says at its end: the last BatchStats window
    st = worker._stats
    if st.batches:
        span = time.monotonic() - st.since
        log.info(
            "worker %s: %d events in %.1f s (%.0f/s), %d batches (avg %.0f) [last window]",
            worker.worker_id,
            st.events,
            span,
            st.events / span,
            st.batches,
            st.events / st.batches,
        )


# ---------------------------------------------------------------------- the bench's side
@contextmanager
def rdk_side(
    bootstrap: str,
    args: argparse.Namespace,
    workdir: Path,
    pythonpath: str | None = None,
    extra: dict[str, str] | None = None,
) -> Iterator[tuple[str, str, int]]:
    """A prototype worker process on fresh topics (bench/latency_bench.py's ``rdk`` and
    ``rdk:DIR`` sides): (requests topic, decisions topic, pid); ``pythonpath``: Baton from
    there (a compiled build), this checkout's bench either way."""
    from baton.streams.net import free_port
    from baton.streams.topics import ensure_topics
    from bench.latency_bench import _wait_for, compiled_loaded
    from bench.worker_bench import PARTITIONS

    prefix = f"rdk{uuid.uuid4().hex[:6]}."
    catalog = TopicCatalog(prefix=prefix, partitions=PARTITIONS, replication=1)
    ensure_topics({"bootstrap.servers": bootstrap}, catalog, timeout=10)
    (workdir / prefix).mkdir()
    env = {
        **os.environ,
        "BATON_BOOTSTRAP": bootstrap,
        "BATON_TOPIC_PREFIX": prefix,
        "BATON_PARTITIONS": str(PARTITIONS),
        "BATON_APP_ID": f"bench-{prefix.rstrip('.')}",
        "BATON_WEB_PORT": str(free_port()),
        "BATON_WORKER_DATA_DIR": str(workdir / prefix / "w"),
        "BATON_SESSION_TIMEOUT_S": "6",
        "BATON_PROCESSING_GUARANTEE": args.guarantee,
        "BATON_FETCH_MAX_WAIT_MS": str(args.fetch_wait_ms),
        **(extra or {}),
    }
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    log_path = workdir / prefix / "rdk-worker.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.rdk_worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )
    try:
        _wait_for("the rdk worker", lambda: " ready (policy" in log_path.read_text(), 120)
        yield catalog.requests, catalog.decisions, proc.pid
        print(f"  rdk worker: {compiled_loaded(proc.pid)} compiled baton modules", file=sys.stderr)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for line in log_path.read_text(errors="replace").splitlines():
            if any(w in line for w in ("events in", "Traceback", "Error", "CPU split", "us/event")):
                print("  " + line.split("] ", 1)[-1], file=sys.stderr)


if __name__ == "__main__":
    main()
