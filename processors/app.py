r"""One governance worker process: Faust's fetched batches through the engine to one producer.

    gov.handoff.requests + gov.approvals --(batches)--> engine --> gov.decisions, gov.stops
                                                           \--> runs changelog, gov.deadletter
    gov.control --(every worker, ControlFollower thread)--> kill switches, policy

The hot path follows ARCHITECTURE.md ("Hot path: what was measured"): events are taken in
batches (one per fetch), states are read and written through the table's store, and every
output (including the changelog) goes through one confluent-kafka producer; a batch is
acknowledged only once its outputs are delivered, so offsets are committed only after
delivery, while the next batches are already fetched and decided (processors/publish.py).
Faust's internals are reached only through ``processors/faust_adapter.py``; the app's
configuration is in ``faust_app``, the sweep's step in ``sweep_step``, membership in ``fencing``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import faust

from baton.processors import faust_adapter, fetch_bound
from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.batch_records import record_of
from baton.processors.batch_stats import BatchStats
from baton.processors.capacity import capacity_of
from baton.processors.control import ControlFollower
from baton.processors.control_seal import seal_key, workers_chain_key
from baton.processors.exits import EXIT_DELIVERY_FAILED, changelog_ends, exit_without_commit
from baton.processors.faust_adapter import RunStore, WorkerRuntime
from baton.processors.faust_app import build_app, runs_table, source_topic
from baton.processors.fencing import Membership, check_generation, group_metadata
from baton.processors.held_kills import held_from_restart
from baton.processors.metrics import WorkerMetrics
from baton.processors.progress import caught_up, lag, log_end
from baton.processors.publish_select import worker_publisher
from baton.processors.recorded import policy_in_force
from baton.processors.sweep import DueIndex
from baton.processors.sweep_step import drop_unkeyed, sweep_due
from baton.schemas.errors import BrokerUnavailable
from baton.schemas.name_scripts import compile_patterns
from baton.schemas.policy import Policy
from baton.schemas.settings import Settings
from baton.streams.topics import TopicCatalog

__all__ = ["GovernanceWorker", "create_app"]

log = logging.getLogger(__name__)

#: runs the 1 s sweep looks at, at most: after a rebalance every restored run is due once
_SWEEP_LIMIT = 5000
#: batches decided whose outputs are not yet durable, at most (at-least-once pipelining)
_MAX_BATCHES_IN_FLIGHT = 64
#: how long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).
#: The worker's threads hand each other every fetch (Faust's consumer thread, the event
#: loop, librdkafka's callbacks): at the default, a fetch response waited up to 5 ms per
#: hand-over behind a batch being decided (bench/RESULTS.md, issue 15)
_GIL_SWITCH_S = 0.0005


class GovernanceWorker:
    """Everything one worker process holds: the Faust app, its producer, control follower."""

    def __init__(self, settings: Settings, policy: Policy, worker_id: str | None = None) -> None:
        sys.setswitchinterval(_GIL_SWITCH_S)
        compile_patterns()  # not on the loop at the first non-ASCII name (schemas/name_scripts)
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.catalog = TopicCatalog.from_settings(settings)
        #: (topic, partition) -> fetch position once every record before it was decided (its
        #: outputs handed to the producer); the transport (processors/faust_adapter.py) keeps
        #: it up to date
        self._decided: dict[tuple[str, int], int] = {}
        self.app = self._build_app()
        self.changelog_topic = self.runs.changelog_topic.get_topic_name()
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        self.publisher = worker_publisher(
            settings,
            decisions_topic=self.catalog.decisions,
            stops_topic=self.catalog.stops,
            deadletter_topic=self.catalog.deadletter,
            changelog_topic=self.changelog_topic,
            transactional_id=self._transactional_id() if self.exactly_once else None,
        )
        #: counted always (one call per batch); served on /metrics by the CLI when asked
        self.metrics = WorkerMetrics(self.worker_id, capacity_of(settings, self.worker_id))
        self._seal_key = seal_key(settings)  # seals command and policy records (a restart's)
        self._chain_key = workers_chain_key(settings, settings.worker_data_dir)  # (a bad file: now)
        self.control = ControlFollower(
            settings.kafka_config(),
            self.catalog.control,
            policy,
            worker=self.worker_id,
            # sent with the next batch or sweep (within its transaction, under exactly-once)
            on_decision=self._enqueue,
            on_dead_letter=self._enqueue,
            max_staleness_s=settings.control_max_staleness_s,
            held=held_from_restart(settings.worker_data_dir),
            seal_key=self._seal_key,
        )
        self._processor: BatchProcessor | None = None
        self._lock = asyncio.Lock()
        #: acknowledgements waiting for their batch's run states to be durable
        self._acking: set[asyncio.Future[None]] = set()
        self._ready = asyncio.Event()
        self._owned: set[int] = set()
        #: runs by the time the sweep next has work on them (rebuilt when partitions move)
        self._due = DueIndex(
            settings.run_retention_s, settings.tombstone_retention_s, settings.hold_idle_s
        )
        self._indexed_generation: int | None = None
        self._stats = BatchStats(self.worker_id)
        self.control.on_policy(self._on_policy)
        self.app.on_partitions_revoked.connect(self._on_revoked_signal)

    # ------------------------------------------------------------------ wiring
    def _build_app(self) -> faust.App:
        s = self.settings
        runtime = WorkerRuntime(
            source_topics=frozenset({self.catalog.requests, self.catalog.approvals}),
            on_batch=self._on_fetched_batch,
            decided=self._decided,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            # a changelog written under exactly-once (also before a switch back to
            # at-least-once) ends with a transaction marker, which recovery would wait for
            committed_ends=self._committed_ends,
            offsets_in_transactions=s.processing_guarantee == "exactly_once",
            inline_consumer=s.consumer_loop == "inline",
        )
        fetch_bound.install(s.max_decompressed_batch_bytes, runtime.source_topics)
        app = build_app(s, runtime)
        source = source_topic(app, self.catalog, s.partitions)
        self.runs = runs_table(app, s.partitions)

        @app.agent(source, name="govern")
        async def govern(stream: faust.StreamT[bytes]) -> None:
            # Subscribes the source topics; their messages never reach it: the baton-kafka://
            # transport hands them to _on_fetched_batch. One that does means that transport is
            # not in place: no batch of it would be decided, so end here, loudly, uncommitted.
            async for _event in stream:
                exit_without_commit(
                    EXIT_DELIVERY_FAILED,
                    "worker %s: a source message reached Faust's agent (is the %s:// "
                    "transport in place?); exiting without committing",
                    self.worker_id,
                    faust_adapter.SCHEME,
                )

        @app.task
        async def start_control() -> None:
            self.control.start()
            try:  # the producer connects (gets its producer id) while control is read
                await self.publisher.start()
            except BrokerUnavailable as exc:
                exit_without_commit(EXIT_DELIVERY_FAILED, "worker %s: %s", self.worker_id, exc)
            loop = asyncio.get_running_loop()
            # never decide before every kill switch is known: a missed global kill fails open
            while not await loop.run_in_executor(None, self.control.caught_up.wait, 10.0):
                log.warning(
                    "worker %s: still reading the control topic before deciding: %s",
                    self.worker_id,
                    self.control.why_stale(),
                )
            # the policy document, recorded before the first decision under it (baton replay)
            self._on_policy(self.control.policy)
            self._ready.set()
            log.info("worker %s ready (policy %s)", self.worker_id, self.control.policy.version)

        @app.timer(interval=1.0)
        async def sweep() -> None:
            await self._sweep()

        @app.timer(interval=1.0)
        async def report_metrics() -> None:
            self._report_metrics()

        return app

    def _transactional_id(self) -> str:
        s = self.settings
        return s.transactional_id or f"{s.app_id}-{socket.gethostname()}-{os.getpid()}"

    def _committed_ends(self, ends: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        txn_s = self.settings.transaction_timeout_ms / 1000
        return changelog_ends(self.settings.kafka_config(), ends, txn_s)

    def _membership(self) -> Membership:
        """(group id, generation, member id) of this worker's consumer right now."""
        return faust_adapter.membership(self.app)

    def _group_metadata(self, expected: Membership) -> bytes:
        """The group metadata for a batch's offset commit, if still ``expected``'s."""
        return group_metadata(expected, self._membership())

    async def _on_revoked_signal(self, sender: Any, revoked: Any = (), **_: Any) -> None:
        await self._on_revoked(revoked)

    def _enqueue(self, record: Any) -> None:
        """Send a control decision or dead letter with the next publish (and count it)."""
        self.metrics.queued(record)
        self.publisher.enqueue(record)

    def _on_policy(self, policy: Policy) -> None:
        self._enqueue(policy_in_force(policy, datetime.now(UTC), self.worker_id, self._seal_key))
        if self._processor is not None:
            self._processor.policy = policy

    @property
    def processor(self) -> BatchProcessor:
        if self._processor is None:
            self._processor = BatchProcessor(
                self.control.policy,
                self.settings.partitions,
                RunStore(self.runs, self.settings.partitions),
                worker=self.worker_id,
                kills=lambda: self.control.kills,
                exactly_once=self.exactly_once,
                run_state_max_bytes=self.settings.run_state_max_bytes,
                max_runs=self.settings.max_runs,
                approvals_topic=self.catalog.approvals,
                max_state_bytes=self.settings.max_state_bytes,
                log_end=lambda topic, partition: log_end(self.app, topic, partition),
                chain_key=self._chain_key,
            )
        return self._processor

    # ------------------------------------------------------------------ hot path
    async def _on_fetched_batch(
        self, messages: list[Any], current: Callable[[], bool] | None = None
    ) -> None:
        """One batch per fetch (the baton-kafka:// transport), acked here once its outputs are
        durable. Returns once its decisions are handed to the producer: the transport fetches
        and decides the next batch while they, and then the run states, are delivered (at
        most _MAX_BATCHES_IN_FLIGHT batches; Faust waits for the acks before it lets
        partitions go).

        ``current()`` turns False when a seek made the batch stale: it is then dropped
        unacknowledged (its records are fetched again from the seek's position).
        """
        generation = self.app.consumer_generation_id
        membership = self._membership() if self.exactly_once else None
        await self._ready.wait()
        while len(self._acking) >= _MAX_BATCHES_IN_FLIGHT:  # the broker is behind: wait
            await asyncio.wait(self._acking, return_when=asyncio.FIRST_COMPLETED)
        durable = await self._decide_and_publish(
            [record_of(m) for m in messages],
            generation,
            membership,
            current,
        )
        if durable is None:
            return
        if durable.done():
            self._ack_or_exit(messages, durable)
        else:
            # a callback, not a task per batch: acknowledged the moment it is durable
            self._acking.add(durable)
            durable.add_done_callback(lambda done: self._ack_or_exit(messages, done))

    def _ack_or_exit(self, messages: list[Any], durable: asyncio.Future[None]) -> None:
        """Acknowledge a durable batch's messages; never one whose outputs were not delivered
        (the process ends uncommitted), nor one cancelled by a shutdown (read again later)."""
        self._acking.discard(durable)
        if durable.cancelled():
            return
        if durable.exception() is not None:
            exit_without_commit(
                EXIT_DELIVERY_FAILED,
                "worker %s could not deliver a batch's outputs (%s); exiting without committing",
                self.worker_id,
                durable.exception(),
            )
        faust_adapter.ack_fetched(self.app, messages)

    def _heartbeats_waited(self, blocked_s: float) -> None:
        """Raise if, inline, the batch step held the loop past 2/3 of the session: the
        heartbeats waited, the group may have moved the partitions and the generation not
        yet say so (``_still_owner`` cannot tell). Dying commits nothing (the owner redoes it)."""
        inline = self.settings.consumer_loop == "inline"
        if inline and blocked_s > self.settings.session_timeout_s * 2 / 3:
            raise RuntimeError(f"inline, the batch step held the loop {blocked_s:.1f} s")

    def _still_owner(self, generation: int) -> None:
        # A worker the group expelled while it was stuck in a flush must not write run
        # states: another worker has restored them and moved on. Dying here commits nothing.
        check_generation(generation, self.app.consumer_generation_id)

    async def _decide_and_publish(
        self,
        records: list[InputRecord],
        generation: int,
        membership: Membership | None = None,
        current: Callable[[], bool] | None = None,
    ) -> asyncio.Future[None] | None:
        """Decide and publish ``records``; None if they went stale before (not decided),
        else once their decisions are handed to the producer, a future completing once the
        whole batch (its run states too) is durable: acknowledge the input only then."""
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
                self._heartbeats_waited(t1 - t0)
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
            self._stats.add(len(records), t1 - t0, t2 - t1, self.processor.redelivered)
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
        """True when every event already in the partition's source topics was decided."""
        topics = (self.catalog.requests, self.catalog.approvals)
        return caught_up(self.app, self._decided, topics, partition)

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
            or faust_adapter.in_recovery(app)
            or not app.consumer.flow_active
            or not self.control.is_fresh()
        ):
            return  # the store may hold half-restored states while recovery replays
        now = datetime.now(UTC)
        active = {
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self.catalog.requests
        }
        generation = app.consumer_generation_id
        async with self._lock:
            if app.rebalancing or faust_adapter.in_recovery(app):
                return
            if active != self._owned or generation != self._indexed_generation:
                self._reindex(active, generation, now.timestamp())
            out = sweep_due(
                self.processor,
                self._due,
                now,
                active=active,
                ready={p for p in active if self._caught_up(p)},
                kills=self.control.kills,
                run_retention_s=self.settings.run_retention_s,
                tombstone_retention_s=self.settings.tombstone_retention_s,
                limit=_SWEEP_LIMIT,
            )
            try:
                durable = await self.publisher.publish_decisions_first(
                    out, before_state=lambda: self._still_owner(generation)
                )
            except Exception:
                exit_without_commit(EXIT_DELIVERY_FAILED, "sweep could not publish; exiting")
            self.metrics.swept(out)
        try:
            await durable  # outside the lock: batches go on being decided meanwhile
        except Exception:
            exit_without_commit(EXIT_DELIVERY_FAILED, "sweep could not publish; exiting")

    def _reindex(self, active: set[int], generation: int, now_ts: float) -> None:
        """An assignment (even of the same partitions: revoked and given back while sweeps
        were skipped) came with states restored from the changelog: every run is due once,
        looked at _SWEEP_LIMIT a second; sizes from their records."""
        self._owned = active
        self._indexed_generation = generation
        log.info("worker %s owns partitions %s", self.worker_id, sorted(active))
        proc = self.processor
        states: RunStore = proc.states  # type: ignore[assignment]
        for key in drop_unkeyed(states):
            log.warning("changelog record without a run id as its key (%r) ignored", key)
        keys = list(states)
        self._due.rebuild_keys(keys, now_ts)
        proc.forget_sizes()
        for key in keys:
            proc.account(key, states.encoded_size(key))

    def _report_metrics(self) -> None:
        """Refresh the gauges: lag per partition (high watermark - decided position), runs."""
        proc = self._processor
        self.metrics.set_state(
            lag(self.app, self._decided),
            len(proc.states) if proc is not None else 0,
            proc.state_bytes if proc is not None else 0,
            self.control.policy.version,
            proc.redelivered if proc is not None else 0,
        )


def create_app(settings: Settings, policy: Policy, worker_id: str | None = None) -> faust.App:
    """A Faust app for one worker process (the factory tests and the CLI use)."""
    return GovernanceWorker(settings, policy, worker_id).app
