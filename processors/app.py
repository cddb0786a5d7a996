r"""The Faust governance app: wires topics, the ``runs`` table and the engine, and nothing more.

    gov.handoff.requests + gov.approvals --(batches)--> engine --> gov.decisions, gov.stops
                                                           \--> runs changelog, gov.deadletter
    gov.control --(every worker, ControlFollower thread)--> kill switches, policy

The hot path follows ARCHITECTURE.md ("Hot path: what was measured"): events are taken in
batches, states are read and written through the table's store, and every output
(including the changelog) goes through one confluent-kafka producer that is flushed before
the batch is acknowledged, so offsets are committed only after delivery.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import TP

from baton.processors import transport
from baton.processors.batch import BatchProcessor, InputRecord, Outputs
from baton.processors.chain import link
from baton.processors.control import ControlFollower
from baton.processors.engine import evict, expire_due
from baton.processors.exits import EXIT_DELIVERY_FAILED, exit_without_commit
from baton.processors.metrics import WorkerMetrics
from baton.processors.publish import BatchPublisher
from baton.processors.recorded import policy_in_force
from baton.processors.state import RunState
from baton.processors.sweep import DueIndex
from baton.schemas.policy import Policy
from baton.schemas.settings import Settings
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog
from baton.streams.transactions import committed_ends, consumer_group_metadata

__all__ = ["GovernanceWorker", "create_app"]

log = logging.getLogger(__name__)

#: runs the 1 s sweep looks at, at most: after a rebalance every restored run is due once
_SWEEP_LIMIT = 5000


class _TableStates(MutableMapping[bytes, RunState]):
    """The ``runs`` table's in-memory store, written directly (the changelog is ours to write).

    Faust's memory store remembers each key's partition to drop the keys of revoked
    partitions after a rebalance; it learns that only from changelog records it reads, so a
    direct write must record it too, or a worker would keep stale runs it no longer owns.
    """

    def __init__(self, store: Any, partitions: int) -> None:
        self._data: dict[bytes, RunState] = store.data
        self._key_partition: dict[bytes, int] = store._key_partition
        self._partitions = partitions

    def __getitem__(self, key: bytes) -> RunState:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def get(self, key: bytes, default: Any = None) -> Any:
        value = self._data.get(key)
        if value is None:
            return default
        if isinstance(value, bytes):  # restored from the changelog by Faust's recovery
            value = self._data[key] = RunState.from_bytes(value)
        return value

    def __setitem__(self, key: bytes, value: RunState) -> None:
        if key not in self._data:
            self._key_partition[key] = partition_for(key, self._partitions)
        self._data[key] = value

    def encoded_size(self, key: bytes) -> int:
        """The run's size as its changelog record (no decoding for a restored one)."""
        value = self._data.get(key)
        if value is None:
            return 0
        return len(value) if isinstance(value, bytes) else len(value.to_bytes())

    def __delitem__(self, key: bytes) -> None:
        del self._data[key]
        self._key_partition.pop(key, None)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class _BatchStats:
    """Logs, every 10 s of traffic, what the hot path did: events, batches, where time went."""

    def __init__(self, worker_id: str, every_s: float = 10.0) -> None:
        self.worker_id = worker_id
        self.every_s = every_s
        self._reset(time.monotonic())

    def _reset(self, now: float) -> None:
        self.since = now
        self.events = self.batches = 0
        self.decide_s = self.publish_s = 0.0

    def add(self, events: int, decide_s: float, publish_s: float) -> None:
        self.events += events
        self.batches += 1
        self.decide_s += decide_s
        self.publish_s += publish_s
        now = time.monotonic()
        if now - self.since >= self.every_s:
            span = now - self.since
            log.info(
                "worker %s: %d events in %.1f s (%.0f/s), %d batches (avg %.0f), "
                "decide %.0f%%, publish %.0f%% of the time",
                self.worker_id,
                self.events,
                span,
                self.events / span,
                self.batches,
                self.events / self.batches,
                100 * self.decide_s / span,
                100 * self.publish_s / span,
            )
            self._reset(now)


class GovernanceWorker:
    """Everything one worker process holds: the Faust app, its producer, control follower."""

    def __init__(self, settings: Settings, policy: Policy, worker_id: str | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.catalog = TopicCatalog(
            prefix=settings.topic_prefix,
            partitions=settings.partitions,
            replication=settings.replication_factor,
        )
        #: (topic, partition) -> fetch position once every record before it was decided and
        #: published; the transport (processors/transport.py) keeps it up to date
        self._decided: dict[tuple[str, int], int] = {}
        self.app = self._build_app()
        self.changelog_topic = self.runs.changelog_topic.get_topic_name()
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        self.publisher = BatchPublisher(
            settings.kafka_config(),
            decisions_topic=self.catalog.decisions,
            stops_topic=self.catalog.stops,
            deadletter_topic=self.catalog.deadletter,
            changelog_topic=self.changelog_topic,
            transactional_id=self._transactional_id() if self.exactly_once else None,
            transaction_timeout_ms=settings.transaction_timeout_ms,
        )
        #: counted always (one call per batch); served on /metrics by the CLI when asked
        self.metrics = WorkerMetrics(self.worker_id)
        self.control = ControlFollower(
            settings.kafka_config(),
            self.catalog.control,
            policy,
            worker=self.worker_id,
            # sent with the next batch or sweep (within its transaction, under exactly-once)
            on_decision=self._enqueue,
            on_dead_letter=self._enqueue,
            max_staleness_s=settings.control_max_staleness_s,
        )
        self._processor: BatchProcessor | None = None
        self._lock = asyncio.Lock()
        #: acknowledgements waiting for their batch's run states to be durable
        self._acking: set[asyncio.Future[None]] = set()
        self._ready = asyncio.Event()
        self._owned: set[int] = set()
        #: runs by the time the sweep next has work on them (rebuilt when partitions move)
        self._due = DueIndex(settings.run_retention_s, settings.tombstone_retention_s)
        self._indexed_generation: int | None = None
        self._stats = _BatchStats(self.worker_id)
        self.control.on_policy(self._on_policy)
        self.app.on_partitions_revoked.connect(self._on_revoked_signal)

    # ------------------------------------------------------------------ wiring
    def _build_app(self) -> faust.App:
        s = self.settings
        transport.register()
        servers = ";".join(f"{transport.SCHEME}://{h.strip()}" for h in s.bootstrap.split(","))
        app = faust.App(
            s.app_id,
            broker=servers,
            store="memory://",
            autodiscover=False,
            datadir=str(s.worker_data_dir),
            web_port=s.web_port,
            web_enabled=False,
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            topic_disable_leader=True,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=max(s.session_timeout_s / 6, 0.5),
            broker_rebalance_timeout=max(s.session_timeout_s * 2, 10),
            stream_recovery_delay=0.0,
            processing_guarantee="at_least_once",
            broker_credentials=self._faust_credentials(),
        )
        source = app.topic(
            self.catalog.requests,
            self.catalog.approvals,
            key_serializer="raw",
            value_serializer="raw",
            partitions=s.partitions,
        )
        self.runs = app.Table(
            "runs",
            default=None,
            partitions=s.partitions,
            # raw bytes both ways: the changelog holds RunState.to_bytes(), which we write
            # ourselves; recovery leaves bytes in the store and _TableStates decodes them lazily
            key_type=bytes,
            value_type=bytes,
            # safe: every event is decided on its key's murmur2 partition (others are forwarded)
            use_partitioner=True,
            help="run_id -> RunState (owners, agents, counters, spend, approvals, dedup marks)",
        )

        @app.agent(source, name="govern")
        async def govern(stream: faust.StreamT[bytes]) -> None:
            await self._ready.wait()
            async for events in stream.take_events(s.batch_size, within=s.batch_timeout_s):
                await self._process(events)

        @app.task
        async def start_control() -> None:
            self.control.start()
            loop = asyncio.get_running_loop()
            # never decide before every kill switch is known: a missed global kill fails open
            while not await loop.run_in_executor(None, self.control.caught_up.wait, 10.0):
                log.warning(
                    "worker %s: still reading the control topic before deciding: %s",
                    self.worker_id,
                    self.control.why_stale(),
                )
            # the policy document, recorded before the first decision under it (baton replay)
            self._enqueue(policy_in_force(self.control.policy, datetime.now(UTC), self.worker_id))
            self._ready.set()
            log.info("worker %s ready (policy %s)", self.worker_id, self.control.policy.version)

        @app.timer(interval=1.0)
        async def sweep() -> None:
            await self._sweep()

        @app.timer(interval=1.0)
        async def report_metrics() -> None:
            self._report_metrics()

        # read by processors.transport: the fetch wait, and the fast path's batch handler
        app.conf.baton_fetch_max_wait_ms = s.fetch_max_wait_ms
        app.baton_source_topics = frozenset({self.catalog.requests, self.catalog.approvals})
        app.baton_on_batch = self._on_fetched_batch
        app.baton_decided = self._decided
        # a changelog written under exactly-once (also before a switch back to at-least-once)
        # ends with a transaction marker, which Faust's recovery would wait for forever
        app.conf.baton_committed_ends = self._committed_ends
        if s.processing_guarantee == "exactly_once":
            app.conf.baton_offsets_in_transactions = True
        return app

    def _transactional_id(self) -> str:
        s = self.settings
        return s.transactional_id or f"{s.app_id}-{socket.gethostname()}-{os.getpid()}"

    def _committed_ends(self, ends: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        return committed_ends(self.settings.kafka_config(), ends)

    def _membership(self) -> tuple[str, int, str]:
        """(group id, generation, member id) of this worker's consumer right now."""
        coordinator = self.app.consumer._thread._ensure_consumer()._coordinator
        return coordinator.group_id, coordinator.generation, coordinator.member_id

    def _group_metadata(self, expected: tuple[str, int, str]) -> bytes:
        """The group metadata for a batch's offset commit (the broker fences a stale one).

        aiokafka resets an expelled member to generation -1 and no member id, and Kafka
        accepts a transactional offset commit with those *without any check*: so the batch
        commits only under the membership it was fetched in.
        """
        now = self._membership()
        if now != expected or now[1] < 0 or not now[2]:
            raise RuntimeError(
                f"group membership changed during a batch (generation {expected[1]} -> "
                f"{now[1]}): not committing its transaction"
            )
        return consumer_group_metadata(*now)

    async def _on_revoked_signal(self, sender: Any, revoked: Any = (), **_: Any) -> None:
        await self._on_revoked(revoked)

    def _faust_credentials(self) -> Any:
        """What Faust's aiokafka connections authenticate with: the same CA, client
        certificate, key and SASL user as every confluent-kafka client (kafka_config()).

        SASLCredentials sets SASL_SSL exactly when it gets an ssl_context, so the context is
        passed only with SASL_SSL; the settings refuse a SASL protocol without a mechanism,
        so a SASL_* protocol never falls through to plain SSL here."""
        s = self.settings
        if s.security_protocol == "PLAINTEXT":
            return None
        from faust.auth import SASLCredentials, SSLCredentials

        from baton.schemas.connections import client_ssl_context

        ctx = None
        if "SSL" in s.security_protocol:
            key_password = s.ssl_key_password.get_secret_value() if s.ssl_key_password else None
            ctx = client_ssl_context(s.ssl_cafile, s.ssl_certfile, s.ssl_keyfile, key_password)
        if s.security_protocol.startswith("SASL_"):
            return SASLCredentials(
                username=s.sasl_username,
                password=s.sasl_password.get_secret_value() if s.sasl_password else None,
                mechanism=s.sasl_mechanism,
                ssl_context=ctx,
            )
        return SSLCredentials(ctx)

    def _enqueue(self, record: Any) -> None:
        """Send a control decision or dead letter with the next publish (and count it)."""
        self.metrics.queued(record)
        self.publisher.enqueue(record)

    def _on_policy(self, policy: Policy) -> None:
        self._enqueue(policy_in_force(policy, datetime.now(UTC), self.worker_id))
        if self._processor is not None:
            self._processor.policy = policy

    @property
    def processor(self) -> BatchProcessor:
        if self._processor is None:
            self._processor = BatchProcessor(
                self.control.policy,
                self.settings.partitions,
                _TableStates(self.runs.data, self.settings.partitions),
                worker=self.worker_id,
                kills=lambda: self.control.kills,
                exactly_once=self.exactly_once,
                run_state_max_bytes=self.settings.run_state_max_bytes,
                max_runs=self.settings.max_runs,
                approvals_topic=self.catalog.approvals,
                max_state_bytes=self.settings.max_state_bytes,
                chain_key=(
                    self.settings.audit_chain_key.get_secret_value().encode()
                    if self.settings.audit_chain_key
                    else b""
                ),
            )
        return self._processor

    # ------------------------------------------------------------------ hot path
    async def _process(self, events: Any) -> None:
        """The agent's path (plain kafka:// transport): Faust acks the events after this."""
        durable = await self._decide_and_publish(
            [
                InputRecord(
                    e.message.topic,
                    e.message.partition,
                    e.message.offset,
                    e.message.key,
                    e.message.value,
                    e.message.headers,
                    e.message.timestamp,
                )
                for e in events
            ],
            self.app.consumer_generation_id,
            self._membership() if self.exactly_once else None,
        )
        if durable is not None:
            await self._durable_or_exit(durable)

    async def _on_fetched_batch(
        self, messages: list[Any], current: Callable[[], bool] | None = None
    ) -> None:
        """The fast path (baton-kafka:// transport): one batch per fetch, acked here once
        its outputs are durable (the run states may still be in flight when this returns:
        the transport fetches the next batch meanwhile; Faust waits for the acks before it
        lets partitions go).

        ``current()`` turns False when a seek made the batch stale: it is then dropped
        unacknowledged (its records are fetched again from the seek's position).
        """
        generation = self.app.consumer_generation_id
        membership = self._membership() if self.exactly_once else None
        await self._ready.wait()
        durable = await self._decide_and_publish(
            [
                InputRecord(m.topic, m.partition, m.offset, m.key, m.value, m.headers, m.timestamp)
                for m in messages
            ],
            generation,
            membership,
            current,
        )
        if durable is None:
            return
        if durable.done():
            self._ack(messages, durable)
        else:
            acking = asyncio.ensure_future(self._ack_when_durable(messages, durable))
            self._acking.add(acking)  # a reference until done (the loop keeps only weak ones)
            acking.add_done_callback(self._acking.discard)

    async def _ack_when_durable(self, messages: list[Any], durable: asyncio.Future[None]) -> None:
        await self._durable_or_exit(durable)
        self._ack(messages, durable)

    async def _durable_or_exit(self, durable: asyncio.Future[None]) -> None:
        try:
            await durable
        except Exception:
            # never let a batch whose run states were not delivered be acknowledged
            exit_without_commit(
                EXIT_DELIVERY_FAILED,
                "worker %s could not write a batch's run states; exiting without committing",
                self.worker_id,
            )

    def _ack(self, messages: list[Any], durable: asyncio.Future[None]) -> None:
        durable.result()  # raises if the batch is not durable: never acknowledged then
        ack = self.app.consumer.ack
        for m in messages:
            ack(m)
        monitor = self.app.monitor
        if monitor is not None:
            # Faust's stall detector watches stream_inbound_time, which only its streams set:
            # without this it would report these partitions as "not processing" under lag
            now = time.monotonic()
            for tp in {m.tp for m in messages}:
                monitor.stream_inbound_time[tp] = now

    def _still_owner(self, generation: int) -> None:
        # A worker the group expelled while it was stuck in a flush must not write run
        # states: another worker has restored them and moved on. Dying here commits nothing.
        if self.app.consumer_generation_id != generation:
            raise RuntimeError(
                f"consumer generation changed from {generation} to "
                f"{self.app.consumer_generation_id} during a batch; not writing its states"
            )

    async def _decide_and_publish(
        self,
        records: list[InputRecord],
        generation: int,
        membership: tuple[str, int, str] | None = None,
        current: Callable[[], bool] | None = None,
    ) -> asyncio.Future[None] | None:
        """Decide and publish ``records``; None if they went stale before (not decided),
        else once their decisions are acknowledged, a future completing once the whole
        batch (its run states too) is durable: acknowledge the input only then."""
        # never decide on stale kill switches: the batch waits (clients fail closed on their
        # timeout); the follower logs why every few seconds, and ends the process if the
        # control topic stays unreadable (outside the lock, so a revoke is not blocked)
        await self.control.wait_until_fresh()
        try:
            async with self._lock:
                if current is not None and not current():
                    log.info(
                        "worker %s: dropping %d records fetched before a seek (read again)",
                        self.worker_id,
                        len(records),
                    )
                    return None
                t0 = time.perf_counter()
                out = self.processor.process(records, datetime.now(UTC))
                t1 = time.perf_counter()
                offsets: dict[tuple[str, int], int] = {}
                if self.exactly_once:
                    for rec in records:
                        tp = (rec.topic, rec.partition)
                        if rec.offset >= offsets.get(tp, -1):
                            offsets[tp] = rec.offset + 1
                durable = await self.publisher.publish_decisions_first(
                    out,
                    before_state=lambda: self._still_owner(generation),
                    offsets=[(t, p, o) for (t, p), o in offsets.items()],
                    group_metadata=(
                        None if membership is None else lambda: self._group_metadata(membership)
                    ),
                )
                due = self._due
                for key, (_partition, state) in out.changed.items():
                    due.touch(key, state)
                t2 = time.perf_counter()
            self._stats.add(len(records), t1 - t0, t2 - t1)
            self.metrics.batch(records, out, t2 - t0)
            return durable
        except Exception:
            # never let a batch whose outputs were not delivered be acknowledged
            exit_without_commit(
                EXIT_DELIVERY_FAILED,
                "worker %s cannot complete a batch; exiting without committing offsets",
                self.worker_id,
            )

    def _caught_up(self, partition: int) -> bool:
        """True when every event already in the partition's topics has been decided.

        Eviction and approval expiry use the wall clock; with a backlog waiting (after an
        outage, or a rebalance) the run's newer events — a grant, another handoff — have
        not been seen yet, and acting on the clock would expire or forget what they change.
        Positions, not offsets of decided records, are compared with the high watermark: a
        transaction's commit marker takes an offset that is never delivered as a record.
        """
        consumer = self.app.consumer
        for topic in (self.catalog.requests, self.catalog.approvals):
            try:
                high = consumer.highwater(TP(topic, partition))
            except Exception:  # not assigned (any more), or not fetched yet
                return False
            decided = self._decided.get((topic, partition))
            if high is None or decided is None or decided < high:
                return False
        return True

    async def _on_revoked(self, revoked: Any) -> None:
        # wait for a sweep (or batch) in progress before the partitions change hands, and
        # forget what was decided on them: a later assignment starts from committed offsets
        async with self._lock:
            for tp in revoked:
                self._decided.pop((tp.topic, tp.partition), None)

    async def _sweep(self) -> None:
        """Expire approvals whose TTL passed, turn idle runs into tombstones and forget old
        tombstones, on the local partitions; only the runs the due index says are due."""
        app = self.app
        if (
            not self._ready.is_set()
            or app.rebalancing
            or getattr(app, "in_recovery", False)
            or not app.consumer.flow_active
            or not self.control.is_fresh()
        ):
            return  # the store may hold half-restored states while recovery replays
        now = datetime.now(UTC)
        now_ts = now.timestamp()
        proc = self.processor
        states = proc.states
        active = {
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self.catalog.requests
        }
        out = Outputs()
        generation = app.consumer_generation_id
        due = self._due
        async with self._lock:
            if app.rebalancing or getattr(app, "in_recovery", False):
                return
            if active != self._owned or generation != self._indexed_generation:
                # an assignment (even of the same partitions: revoked and given back while
                # sweeps were skipped) came with states restored from the changelog: every
                # run is due once, looked at _SWEEP_LIMIT a second; sizes from the records
                self._owned = active
                self._indexed_generation = generation
                log.info("worker %s owns partitions %s", self.worker_id, sorted(active))
                keys = list(states)
                due.rebuild_keys(keys, now_ts)
                proc.forget_sizes()
                for key in keys:
                    proc.account(key, states.encoded_size(key))  # type: ignore[attr-defined]
            ready = {p for p in active if self._caught_up(p)}
            later: list[bytes] = []
            for key in due.pop_due(now_ts, _SWEEP_LIMIT):
                partition = partition_for(key, self.settings.partitions)
                if partition not in active:
                    continue  # revoked: its new owner indexes it
                if partition not in ready:
                    later.append(key)  # a backlog may change it: look again next sweep
                    continue
                try:
                    state = states.get(key)
                except Exception:
                    log.error(
                        "run %r: stored state cannot be read; left as is",
                        key,
                        exc_info=True,
                        extra={"run_id": key.decode("utf-8", "replace")},  # JSON logs' run_id
                    )
                    continue
                if state is None:
                    continue
                new = state
                if state.pending or state.reserved_due is not None:
                    new, decisions = expire_due(state, proc.policy, now, self.control.kills)
                    if decisions:
                        link(new, decisions, proc.chain_key)
                    out.decisions.extend((partition, d) for d in decisions)
                kept = evict(
                    new, now, self.settings.run_retention_s, self.settings.tombstone_retention_s
                )
                if kept is None:
                    del states[key]
                    out.changed[key] = (partition, None)
                    proc.account(key, None)
                elif kept is not state:
                    states[key] = kept
                    out.changed[key] = (partition, kept)
                    out.encoded[key] = raw = kept.to_bytes()
                    proc.account(key, len(raw))
                due.touch(key, kept)
            for key in later:
                due.push(key, now_ts + 1.0)
            try:
                await self.publisher.publish(
                    out, before_state=lambda: self._still_owner(generation)
                )
            except Exception:
                exit_without_commit(EXIT_DELIVERY_FAILED, "sweep could not publish; exiting")
            self.metrics.swept(out)

    def _report_metrics(self) -> None:
        """Refresh the gauges: lag per partition (high watermark - decided position), runs."""
        lag: dict[tuple[str, int], int] = {}
        consumer = self.app.consumer
        try:
            assigned = self.app.assignor.assigned_actives()
        except Exception:  # not started yet
            assigned = set()
        for tp in assigned:
            decided = self._decided.get((tp.topic, tp.partition))
            try:
                high = consumer.highwater(tp)
            except Exception:  # not fetched yet, or revoked meanwhile
                continue
            if decided is not None and high is not None:
                lag[(tp.topic, tp.partition)] = max(high - decided, 0)
        proc = self._processor
        self.metrics.set_state(
            lag,
            len(proc.states) if proc is not None else 0,
            proc.state_bytes if proc is not None else 0,
            self.control.policy.version,
        )


def create_app(settings: Settings, policy: Policy, worker_id: str | None = None) -> faust.App:
    """A Faust app for one worker process (the factory tests and the CLI use)."""
    return GovernanceWorker(settings, policy, worker_id).app
