"""Faust's aiokafka transport, tuned for the governance worker's hot path.

Two changes, both measured:

* **Fetch wait.** A Kafka fetch waits up to ``fetch.max.wait.ms`` for data. Apache Kafka
  answers as soon as data arrives; Tansu (the embedded broker) holds every fetch until the
  wait expires, and Faust hard-codes 1500 ms. The wait comes from ``BATON_FETCH_MAX_WAIT_MS``.
* **Batches straight from the fetcher.** Faust hands every message to its conductor and
  streams one at a time (two tasks per message in ``Consumer._drain_messages``, a channel
  queue, stream processors); on these machines that per-message path cost more than the
  governance itself. Messages of the topics the app names in ``app.baton_source_topics`` are
  collected per fetch and given to ``app.baton_on_batch`` as one list; the handler
  acknowledges them (``consumer.ack``) once their outputs are delivered, so offsets are
  committed by Faust's own committer exactly as for stream events (under exactly-once, by
  the batch's transaction instead: Faust's committer then commits nothing). A batch
  fetched before a seek is dropped unacknowledged and read again from the seek's position.
  Every other message (table changelogs during recovery, other agents) takes Faust's
  normal path.

Also: the consumer reads ``read_committed`` (a record of an aborted transaction, ours or a
client's, is never governed); after each fetch round whose records are all decided, the
fetch positions of the source partitions go to ``app.baton_decided`` (the sweep's "caught
up" test); and the changelogs' high watermarks given to Faust's table recovery are the
ends of their committed data (``app.conf.baton_committed_ends``), since a
transaction's final commit marker is never delivered and recovery would wait for it.

The worker registers this transport as ``baton-kafka://``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from faust.transport import drivers
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["SCHEME", "BatchHandler", "register"]

SCHEME = "baton-kafka"

#: (messages, still current) -> None; the handler must not decide or acknowledge the
#: messages once ``still current()`` is False (a seek made them stale)
BatchHandler = Callable[[list[Any], Callable[[], bool]], Awaitable[None]]


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # both read by AIOKafkaConsumer.start() when it builds its Fetcher
        consumer._fetch_max_wait_ms = self.app.conf.baton_fetch_max_wait_ms
        consumer._isolation_level = "read_committed"
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Any:
        ends = await super()._highwaters(partitions)
        committed_ends: Callable[[dict[tuple[str, int], int]], dict[tuple[str, int], int]] | None
        committed_ends = getattr(self.app.conf, "baton_committed_ends", None)
        changelogs = self.app.tables.changelog_topics
        probe = {
            (tp.topic, tp.partition): end
            for tp, end in ends.items()
            if end and tp.topic in changelogs
        }
        if committed_ends is None or not probe:
            return ends
        loop = asyncio.get_running_loop()
        fixed = await loop.run_in_executor(None, committed_ends, probe)
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


class _Consumer(faust_aiokafka.Consumer):
    #: bumped by every seek: a batch fetched before a seek is stale (see _drain_messages).
    #: Faust's ``_read_offset`` means "last record read" after a record but "next record to
    #: read" after a seek: a batch fetched before Faust's post-recovery seek and decided
    #: after it would set it past the rewound records (skipping them) and let the last one
    #: through again (deciding, under exactly-once publishing, it twice).
    _seek_epoch: int

    def __post_init__(self) -> None:
        super().__post_init__()
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
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets: Any) -> bool:
        if getattr(self.app.conf, "baton_offsets_in_transactions", False):
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
        on_batch: BatchHandler | None = getattr(self.app, "baton_on_batch", None)
        sources: frozenset[str] = getattr(self.app, "baton_source_topics", frozenset())
        decided: dict[tuple[str, int], int] = getattr(self.app, "baton_decided", {})
        if on_batch is None:
            await super()._drain_messages(fetcher)
            return
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
