"""Every reach into Faust's and aiokafka's internals, behind one typed object, ``WorkerRuntime``.

The worker (``processors/app.py``) gives a ``WorkerRuntime`` to ``GovernedApp`` when it
builds its Faust app; the ``baton-kafka://`` transport below reads it from there. A missing
piece fails when the app is built (every field is required) or when the consumer is made
(an app that is not a ``GovernedApp`` is refused), never silently later.

Private names touched, and why (tests/unit/test_faust_adapter.py pins the source of each
upstream function forked or overridden here, so an upgrade fails naming what to re-check):

Faust ``faust.transport.consumer.Consumer`` (``faust_aiokafka.Consumer`` subclassed)
  * ``_drain_messages`` — **forked** (our copy: ``_Consumer._drain_messages``): the source
    topics' messages go to ``WorkerRuntime.on_batch`` as one list per fetch instead of two
    tasks per message through the conductor (~85 % of the worker's CPU, docs/performance.md).
    The fork uses ``_read_offset`` (Faust's duplicate filter and gap base), ``_add_gap``,
    ``_stopped``, ``diag``, ``wait_first``, ``suspend_flow``, ``consumer_stopped_errors``
    and the fetcher's ``_stopped`` as Faust's loop does.
  * ``_getmany`` — replaced: passes a *copy* of the active partitions (table recovery
    empties Faust's live set while the consumer thread reads it; aiokafka reads an empty
    set as "every partition" and would hand out records of paused partitions).
  * ``perform_seek``, ``seek`` — wrapped: count seeks, so a batch fetched before a seek is
    dropped unacknowledged (Faust's post-recovery seek rewinds what it fetched).
  * ``_new_consumer_thread`` — replaced: our consumer thread below; with
    ``BATON_CONSUMER_LOOP=inline`` its service runs as a task on the worker's loop
    (processors/faust_inline.py: mode's ``ServiceThread`` given the parent loop and a worker
    that makes a task, not a thread; its end-of-thread sweep of the loop's tasks skipped;
    its ``getmany`` calls ``AIOKafkaConsumerThread._fetch_records`` itself, as the thread's
    would through mode's method queue).
  * ``_commit`` — wrapped: under exactly-once each batch's transaction commits its offsets,
    so Faust's background committer commits nothing (a late commit would move the group's
    offset back); it notes ``_thread.tp_last_committed_at`` for Faust's stall detector.
Faust ``AIOKafkaConsumerThread`` (subclassed; ``getmany``: processors/faust_handover.py)
  * ``_create_worker_consumer`` — wrapped: sets aiokafka's ``AIOKafkaConsumer.
    _fetch_max_wait_ms`` (Faust hard-codes 1500 ms; Tansu holds every fetch that long) and
    ``_isolation_level = "read_committed"`` (an aborted transaction is never governed).
  * ``_highwaters`` — wrapped: the changelogs' ends given to table recovery are the ends of
    their committed data (a transaction's commit marker is never delivered, and Tansu's
    ListOffsets answers short), read by ``WorkerRuntime.committed_ends``.
  * ``_consumer`` and aiokafka's ``_subscription.subscription.assignment.state_value(tp)``
    ``.has_valid_position``/``.position`` — the fetch positions of the source partitions
    after a fully decided fetch (``WorkerRuntime.decided``: the sweep's "caught up" test).
  * ``_ensure_consumer()._coordinator`` (aiokafka ``GroupCoordinator``: ``group_id``,
    ``generation``, ``member_id``) — the membership a transaction's offsets are fenced by
    (``membership``).
Faust ``faust.stores.memory.Store``
  * ``_key_partition`` — written with each direct store write (``RunStore``): Faust learns a
    key's partition only from changelog records it reads, and drops revoked partitions'
    keys by it after a rebalance (``on_recovery_completed``).
Faust ``App``, ``Monitor``, ``Recovery`` (public attributes, relied on as documented here)
  * ``Monitor.stream_inbound_time`` — set on each acknowledged fetch (``ack_fetched``): only
    Faust's streams set it, and its stall detector (``verify_event_path``) would report the
    partitions as "not processing" under lag.
  * ``app.tables.recovery.in_recovery`` — the sweep waits while recovery replays changelogs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar

import faust
from faust.transport import drivers
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka

from baton.processors import faust_handover
from baton.processors.faust_inline import inline_thread_options, let_the_next_fetch_go
from baton.processors.state import RunState
from baton.processors.state_gate import state_of
from baton.processors.state_held import hold, record_size
from baton.streams.partitioner import partition_for

__all__ = [
    "SCHEME",
    "BatchHandler",
    "GovernedApp",
    "RunStore",
    "WorkerRuntime",
    "ack_fetched",
    "in_recovery",
    "membership",
    "register",
    "runtime_of",
]

SCHEME = "baton-kafka"

#: (messages, still current) -> None; the handler must not decide or acknowledge the
#: messages once ``still current()`` is False (a seek made them stale)
BatchHandler = Callable[[list[Any], Callable[[], bool]], Awaitable[None]]

#: (topic, partition) -> changelog end as probed -> the end of its committed data
CommittedEnds = Callable[[dict[tuple[str, int], int]], dict[tuple[str, int], int]]


@dataclass(frozen=True, slots=True)
class WorkerRuntime:
    """What the worker gives the ``baton-kafka://`` transport: all of it, or no app."""

    #: topics whose messages go to ``on_batch`` (the requests and approvals topics)
    source_topics: frozenset[str]
    #: decides and acknowledges one fetch's source messages
    on_batch: BatchHandler
    #: (topic, partition) -> fetch position once every record before it was decided;
    #: written by the transport, read by the worker's sweep and lag gauge
    decided: dict[tuple[str, int], int]
    #: the Kafka fetch wait (BATON_FETCH_MAX_WAIT_MS)
    fetch_max_wait_ms: int
    #: the ends of the changelogs' committed data (streams.transactions.committed_ends)
    committed_ends: CommittedEnds
    #: exactly-once: offsets are committed by each batch's transaction, not by Faust
    offsets_in_transactions: bool
    #: run Faust's consumer on the worker's event loop, not in a thread of its own
    #: (BATON_CONSUMER_LOOP=inline; processors/faust_inline.py)
    inline_consumer: bool

    def __post_init__(self) -> None:
        if not self.source_topics:
            raise ValueError("WorkerRuntime.source_topics: expected at least one topic, got none")
        for name in ("on_batch", "committed_ends"):
            value = getattr(self, name)
            if not callable(value):
                raise TypeError(
                    f"WorkerRuntime.{name}: expected a callable, got {type(value).__name__}"
                )


class GovernedApp(faust.App):
    """A Faust app carrying the worker's ``WorkerRuntime`` (the transport's only input)."""

    runtime: WorkerRuntime

    def __init__(self, runtime: WorkerRuntime, *args: Any, **kwargs: Any) -> None:
        self.runtime = runtime
        super().__init__(*args, **kwargs)


def runtime_of(app: Any) -> WorkerRuntime:
    """The runtime of ``app``; an app built without one is refused, never guessed around."""
    if not isinstance(app, GovernedApp):
        raise TypeError(
            f"the {SCHEME}:// transport needs a GovernedApp carrying a WorkerRuntime "
            f"(processors/app.py builds one), got {type(app).__name__}"
        )
    return app.runtime


def membership(app: faust.App) -> tuple[str, int, str]:
    """(group id, generation, member id) of the app's consumer right now."""
    coordinator = app.consumer._thread._ensure_consumer()._coordinator  # type: ignore[attr-defined]
    return coordinator.group_id, coordinator.generation, coordinator.member_id


def in_recovery(app: faust.App) -> bool:
    """True while table recovery replays changelogs (the store holds older states)."""
    return bool(app.tables.recovery.in_recovery)  # type: ignore[attr-defined]


def ack_fetched(app: faust.App, messages: list[Any]) -> None:
    """Acknowledge ``messages`` to Faust (its committer commits them) and tell its stall
    detector their partitions are processing (only Faust's streams would)."""
    ack = app.consumer.ack
    for m in messages:
        ack(m)
    monitor = app.monitor
    if monitor is not None:
        now = time.monotonic()
        for tp in {m.tp for m in messages}:
            monitor.stream_inbound_time[tp] = now


class RunStore(MutableMapping[bytes, RunState]):
    """The ``runs`` table's in-memory store, written directly (the changelog is ours to write).

    Faust's memory store remembers each key's partition to drop the keys of revoked
    partitions after a rebalance; it learns that only from changelog records it reads, so a
    direct write must record it too, or a worker would keep stale runs it no longer owns.
    Values restored by Faust's recovery are bytes, decoded on first access."""

    def __init__(self, table: Any, partitions: int) -> None:
        store = table.data
        self._data: dict[bytes, RunState | bytes] = store.data
        self._key_partition: dict[bytes, int] = store._key_partition
        self._partitions = partitions
        #: keys decoded from bytes since the sweep last took them (``take_revived``)
        self._revived: list[bytes] = []

    def __getitem__(self, key: bytes) -> RunState:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def get(self, key: bytes, default: Any = None) -> Any:
        value = self._data.get(key)
        if value is None:
            return default
        if isinstance(value, bytes):  # held by the sweep, or restored by Faust's recovery
            value = self._data[key] = state_of(key, value)  # (a refused run: ValueError)
            self._revived.append(key)
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
        return record_size(value) if isinstance(value, bytes) else len(value.to_bytes())

    def hold_encoded(self, key: bytes) -> None:
        """Keep an idle run as its changelog record, compressed (processors/state_held.py),
        until its next read (the sweep's ``HoldsRecords``): a fifth of a decoded run's memory."""
        value = self._data.get(key)
        if value is not None and not isinstance(value, bytes):
            self._data[key] = hold(value.to_bytes())

    def idle_since(self, key: bytes) -> float | None:
        """The run's last event while it is decoded; None when it is held or gone (the
        sweep's due index asks before holding a run it saw touched)."""
        value = self._data.get(key)
        if value is None or isinstance(value, bytes):
            return None
        return value.last_event_at  # type: ignore[no-any-return]

    def take_revived(self) -> list[bytes]:
        """The keys decoded from bytes since the last call: a run read without a change
        (a retry answered from its state, a refusal) is idle again from its last event."""
        revived, self._revived = self._revived, []
        return revived

    def __delitem__(self, key: bytes) -> None:
        del self._data[key]
        self._key_partition.pop(key, None)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    getmany = faust_handover.getmany  # its fetch, not through mode's method queue

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # both read by AIOKafkaConsumer.start() when it builds its Fetcher
        consumer._fetch_max_wait_ms = runtime_of(self.app).fetch_max_wait_ms
        consumer._isolation_level = "read_committed"
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Any:
        ends = await super()._highwaters(partitions)
        changelogs = self.app.tables.changelog_topics
        probe = {
            (tp.topic, tp.partition): end
            for tp, end in ends.items()
            if tp.topic in changelogs  # 0 too: Tansu's read_committed answer when held
        }
        if not probe:
            return ends
        loop = asyncio.get_running_loop()
        fixed = await loop.run_in_executor(None, runtime_of(self.app).committed_ends, probe)
        return {tp: fixed.get((tp.topic, tp.partition), end) for tp, end in ends.items()}

    def source_positions(self, topics: frozenset[str]) -> dict[tuple[str, int], int]:
        """Fetch positions of the assigned partitions of ``topics`` (read between fetches)."""
        consumer = self._consumer
        subscription = consumer._subscription.subscription if consumer is not None else None
        assignment = subscription.assignment if subscription is not None else None
        if assignment is None:
            return {}
        out = {}
        for tp in assignment.tps:
            if tp.topic in topics:
                state = assignment.state_value(tp)
                if state.has_valid_position:
                    out[(tp.topic, tp.partition)] = state.position
        return out


class _InlineConsumerThread(_ConsumerThread):
    """Our consumer thread's service run as a task on the worker's loop (faust_inline)."""

    async def _gather_remaining_tasks(self) -> None:
        """Nothing: mode would cancel every task of this loop, the worker's own."""

    async def _keepalive2(self) -> None:
        """Nothing: no thread whose loop could stop answering (see faust_inline)."""

    async def getmany(self, active_partitions: Any, timeout: float) -> Any:
        """The fetch itself: on this loop already, not a round through mode's method queue
        (what ``AIOKafkaConsumerThread.getmany`` enqueues ``_fetch_records`` on)."""
        consumer = self._ensure_consumer()
        records = await self._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=consumer._max_poll_records
        )
        if records:
            await let_the_next_fetch_go()  # in flight while these are decided (faust_inline)
        return records

    async def stop(self) -> None:
        await super().stop()
        if self._thread is not None:
            await self._thread.wait()


class _Consumer(faust_aiokafka.Consumer):
    #: bumped by every seek: a batch fetched before a seek is stale (see _drain_messages).
    #: Faust's ``_read_offset`` means "last record read" after a record but "next record to
    #: read" after a seek: a batch fetched before Faust's post-recovery seek and decided
    #: after it would set it past the rewound records (skipping them) and let the last one
    #: through again (deciding, under exactly-once publishing, it twice).
    _seek_epoch: int
    runtime: WorkerRuntime

    def __post_init__(self) -> None:
        super().__post_init__()
        self.runtime = runtime_of(self.app)  # refused here, when the worker starts
        self._seek_epoch = 0

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        # A copy: Faust passes its live set of active partitions, which table recovery
        # empties (pausing the changelogs) while the consumer thread may be reading it, and
        # aiokafka reads an empty set as "every partition": it would hand out, and move its
        # position past, records of paused source partitions that Faust then drops.
        partitions = set(active_partitions) if active_partitions is not None else None
        return await self._thread.getmany(partitions, timeout)

    async def perform_seek(self) -> None:
        self._seek_epoch += 1
        await super().perform_seek()

    async def seek(self, partition: Any, offset: int) -> None:
        self._seek_epoch += 1
        await super().seek(partition, offset)

    def _new_consumer_thread(self) -> _ConsumerThread:
        if self.runtime.inline_consumer:
            options = inline_thread_options(self.loop)
            return _InlineConsumerThread(self, beacon=self.beacon, **options)
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets: Any) -> bool:
        if self.runtime.offsets_in_transactions:
            # exactly-once: each batch's transaction commits its offsets. Faust's committer
            # commits acknowledged offsets in the background; one of its commits landing
            # after a newer transaction would move the group's offset back (duplicates
            # after a failover), so it commits nothing here. (Noted as committed for Faust's
            # stall detector, which would otherwise report "has not committed" under lag.)
            self._thread.tp_last_committed_at.update(dict.fromkeys(offsets, time.monotonic()))
            return False
        return bool(await super()._commit(offsets))

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - worker loop
        # Faust's loop (faust/transport/consumer.py, Consumer._drain_messages), with the
        # source topics' messages collected into one batch per fetch.
        runtime = self.runtime
        on_batch = runtime.on_batch
        sources = runtime.source_topics
        decided = runtime.decided
        callback = self.callback
        getmany = self.getmany
        epoch = self._seek_epoch

        def current() -> bool:
            # False once a seek happened after this round's fetch: Faust's post-recovery
            # seek rewinds to the committed offsets, and records fetched before it must be
            # neither decided nor recorded as read (they are fetched again from there)
            return self._seek_epoch == epoch

        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        track = self.track_message
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                batch: list[Any] = []
                #: read offsets of the batch's messages, published only once the batch is
                #: decided: the worker's sweep reads them to know a partition has caught up
                batch_read: dict[Any, int] = {}
                epoch = self._seek_epoch
                ait = getmany(timeout=1.0)
                await asyncio.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        offset = message.offset
                        r_offset = batch_read.get(tp, get_read_offset(tp))
                        if r_offset is not None and offset < r_offset:
                            continue  # already read (Faust drops these too)
                        gap = offset - (r_offset or 0)
                        # (Faust tests ``r_offset`` for truth: after record 0, a gap left by
                        # an aborted client transaction would stall its commits for good)
                        if gap > 1 and r_offset is not None and acks_enabled_for(message.topic):
                            # the offsets in between, not this record (not decided yet)
                            await self._add_gap(tp, r_offset + 1, offset - 1)
                        if message.topic in sources:
                            track(message)
                            batch.append(message)
                            batch_read[tp] = offset
                        else:
                            if batch:  # keep order with anything else this fetch held
                                await on_batch(batch, current)
                                if current():
                                    self._read_offset.update(batch_read)
                                batch, batch_read = [], {}
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                    if batch:
                        await on_batch(batch, current)
                    if current():
                        self._read_offset.update(batch_read)
                        # every record fetched so far is decided: only getmany moves positions
                        decided.update(self._thread.source_positions(sources))
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[_Consumer]] = _Consumer


def register() -> None:
    """Make ``baton-kafka://host:port`` resolve to this transport (idempotent)."""
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
