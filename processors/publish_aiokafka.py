"""Publishes one batch's outputs with aiokafka's producer: one produce request per batch and step.

librdkafka (processors/publish.py) sends one ProduceRequest per partition: a batch's decisions
over 8 partitions and its run states over 8 more are 16 requests, at most 5 in flight per
connection under idempotence, and each waits its turn in librdkafka's queue (bench/RESULTS.md,
issue 15). aiokafka drains its accumulator by broker (``Sender.drain_by_nodes``): every
partition ready for a broker goes in one request, one request in flight per broker, and
whatever came meanwhile rides in the next. On the embedded one-node Tansu a batch's decisions
are one request and its states (with the next batch's decisions) one more.

The same guarantees as the librdkafka publisher's at-least-once mode (its docstring): a
batch's decisions are handed over and the worker decides the next batch meanwhile; its run
states are sent once every decision (dead letter, forward) of the batch is acknowledged and
the previous batch's states were sent; the batch is durable (its input acknowledged to Faust)
once its states are acknowledged too, in batch order. A record not delivered within
``request_timeout_ms`` fails its batch and every later one (the worker exits uncommitted):
counted here, since an idempotent aiokafka producer retries a record forever.
The order itself is ``publish_order``'s, shared with the librdkafka publisher. Records for a
partition whose previous record batch is still queued (not yet in a request) join it; one
being retried or full makes ``send_batch`` wait for it to go (never a drop); a record too
large for Kafka is refused before it is queued. Exactly-once
(transactions) is not offered here: it stays on librdkafka.

Not guaranteed: records queued when the process stops are not flushed (their batches were
never acknowledged, so they are fetched and decided again; the engine's dedup marks keep
that from counting twice). aiokafka runs on the worker's event loop: its request encoding
and response handling are the worker's CPU, not a librdkafka thread's.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from aiokafka.structs import TopicPartition

from baton.processors.batch import DeadLetter, Outputs
from baton.processors.batch_records import dead_letter_without_original
from baton.processors.publish_delivery import DeliveryFailed
from baton.processors.publish_order import PipelinedOrder
from baton.processors.publish_transaction import Offsets
from baton.schemas.decision import Decision, Outcome
from baton.schemas.errors import BrokerUnavailable
from baton.streams.kafka import NOT_WRITTEN
from baton.streams.partitioner import partition_for

__all__ = ["AiokafkaPublisher", "DeliveryFailed", "RecordTooLarge"]

log = logging.getLogger(__name__)

#: the largest record Kafka takes by default (message.max.bytes), as librdkafka refuses it
MAX_RECORD_BYTES = 1_000_000

_PRODUCER_DEFAULTS: dict[str, Any] = {
    # idempotence keeps a retried request from duplicating or reordering a run's records
    "enable_idempotence": True,
    "acks": "all",
    # no wait for more records: the batch's records are queued in one go
    "linger_ms": 0,
    # one partition's records of a big batch in one record batch (librdkafka's batch.size):
    # a second one for a partition waits for the first to be sent
    "max_batch_size": 1_000_000,
    "max_request_size": MAX_RECORD_BYTES,
    # a record undeliverable this long ends the worker (exit 75, nothing committed); the
    # same 60 s as the librdkafka publisher's message.timeout.ms
    "request_timeout_ms": 60_000,
    "compression_type": None,
}


class RecordTooLarge(DeliveryFailed):
    """A record larger than Kafka takes: refused before it is queued."""


class _Step:
    """The records of one step of a batch (its decisions, or its states) until aiokafka has
    answered for each: ``future`` completes then, or fails naming what was not delivered,
    or what was still unanswered ``timeout_s`` after the step was sealed (an idempotent
    aiokafka producer retries a record forever: it never expires one itself)."""

    __slots__ = (
        "bootstrap", "count", "errors", "failed", "first", "future", "records", "sealed",
        "timeout_s", "timer",
    )  # fmt: skip

    def __init__(self, bootstrap: str, timeout_s: float) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self.count = 0
        self.errors: list[str] = []
        self.failed = 0
        #: where the step's first record went (named when records are never answered)
        self.first = ""
        self.sealed = False
        self.timer: asyncio.TimerHandle | None = None
        #: (topic, partition) -> its records (key, value, headers) until handed over
        self.records: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, Any]]] = {}

    def add(self, batch: asyncio.Future[Any], topic: str, partition: int, records: int) -> None:
        """Count ``records`` in (one record batch of aiokafka's, answered by ``batch``)."""
        if not self.count:
            self.first = f"{topic}[{partition}]"
        self.count += records
        batch.add_done_callback(lambda f: self._answered(f, topic, partition, records))

    def _answered(
        self, batch: asyncio.Future[Any], topic: str, partition: int, records: int
    ) -> None:
        if batch.cancelled() or batch.exception() is not None:
            self.failed += records
            why = "cancelled" if batch.cancelled() else repr(batch.exception())
            self.errors.append(f"{topic}[{partition}]: {why}")
        elif (answer := batch.result()) is None or answer.offset < 0:
            # Tansu answers a batch it takes for a duplicate (another writer used this
            # producer's id and next sequence) with offset -1: acknowledged, never written
            # (None: no acknowledgement at all, acks=0's answer)
            self.failed += records
            self.errors.append(f"{topic}[{partition}]: {NOT_WRITTEN}")
        self.count -= records
        if self.sealed and self.count == 0:
            self._resolve()

    def seal(self) -> None:
        self.sealed = True
        if self.count == 0:
            self._resolve()
        else:
            self.timer = self.future.get_loop().call_later(self.timeout_s, self._expire)

    def _expire(self) -> None:
        self.failed += self.count
        self.errors.append(
            f"{self.count} records (the first to {self.first}) not acknowledged within "
            f"{self.timeout_s:g} s (request_timeout_ms)"
        )
        self._resolve()

    def _resolve(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.future.done():
            return
        if self.errors:
            self.future.set_exception(
                DeliveryFailed(
                    f"could not deliver {self.failed} records to Kafka at "
                    f"{self.bootstrap}: " + "; ".join(self.errors[:3])
                )
            )
        else:
            self.future.set_result(None)


class AiokafkaPublisher(PipelinedOrder):
    """The at-least-once publisher on aiokafka (see the module docstring); started on the
    worker's loop at its first batch."""

    transactional = False

    def __init__(
        self,
        client_options: dict[str, Any],
        *,
        decisions_topic: str,
        stops_topic: str,
        deadletter_topic: str,
        changelog_topic: str,
    ) -> None:
        """``client_options`` are ``AIOKafkaProducer`` keyword arguments (bootstrap_servers,
        security); no connection is made until the first publish (on the worker's loop)."""
        super().__init__()
        self._options = {**_PRODUCER_DEFAULTS, **client_options}
        self._bootstrap = str(self._options.get("bootstrap_servers", "?"))
        self._producer: Any = None
        #: partitions of the topics records without a partition go to (from the broker)
        self._partitions: dict[str, int] = {}
        self.decisions_topic = decisions_topic
        self.stops_topic = stops_topic
        self.deadletter_topic = deadletter_topic
        self.changelog_topic = changelog_topic
        #: records from other threads (the control follower), sent with the next publish
        self._queued: deque[Decision | DeadLetter] = deque()
        #: aiokafka's accumulator and cluster metadata once started (``_queue_now``)
        self._accumulator: Any = None
        self._metadata: Any = None

    # ------------------------------------------------------------------ connection
    async def start(self) -> None:
        """Connect and get a producer id; raise ``BrokerUnavailable`` naming the address."""
        if self._producer is not None:
            return
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        from baton.processors import publish_codec, publish_pid

        publish_pid.install()  # Tansu answers aiokafka's own InitProducerId v0 with an error
        publish_codec.install()  # produce requests written and answers read with struct
        producer = AIOKafkaProducer(**self._options)
        topics = (self.decisions_topic, self.stops_topic, self.deadletter_topic)
        try:
            await producer.start()
            self._partitions = {t: len(await producer.partitions_for(t)) for t in topics}
        except (KafkaError, OSError) as exc:
            await producer.stop()
            raise BrokerUnavailable(
                f"cannot reach Kafka at {self._bootstrap} for the worker's producer, or "
                f"read its topics {', '.join(topics)} ({exc!r}); is the broker running, the "
                "address right and are the topics created?"
            ) from exc
        self._producer = producer
        if producer._txn_manager is None or producer._txn_manager.transactional_id is None:
            self._accumulator = producer._message_accumulator
            self._metadata = producer.client.cluster

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (for at most ``timeout_s``: aiokafka would retry forever
        while the broker is away) and close the connections."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await asyncio.wait_for(producer.stop(), timeout_s)
            except TimeoutError:
                log.warning(
                    "producer to Kafka at %s stopped with records undelivered after %g s",
                    self._bootstrap,
                    timeout_s,
                )

    # ------------------------------------------------------------------ records
    def _put(
        self,
        step: _Step,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None = None,
        headers: Any = None,
    ) -> None:
        """Add one record to ``step``, on ``partition`` or its key's murmur2 partition."""
        size = len(value or b"") + len(key or b"")
        if size > MAX_RECORD_BYTES:
            # refused here, as librdkafka refuses it in produce(): in a record batch the
            # broker would refuse the whole batch, and the worker would end on every restart
            raise RecordTooLarge(
                f"a record of {size} bytes for {topic} is larger than Kafka takes "
                f"({MAX_RECORD_BYTES} bytes, message.max.bytes)"
            )
        if partition is None:
            partition = self._partition(topic, key)
        records = step.records.get((topic, partition))
        if records is None:
            records = step.records[(topic, partition)] = []
        records.append((key, value, headers))

    def _partition(self, topic: str, key: bytes | None) -> int:
        """The partition Faust (aiokafka's default partitioner) gives ``key``: murmur2, or
        any partition for no key."""
        count = self._partitions[topic]
        return random.randrange(count) if key is None else partition_for(key, count)

    def _produce_decision(self, step: _Step, partition: int | None, d: Decision) -> None:
        raw = self._signed(d.to_json())
        key = d.run_id.encode()
        self._put(step, self.decisions_topic, raw, key, partition)
        if d.outcome == Outcome.STOP:
            self._put(step, self.stops_topic, raw, key, partition)

    def _produce_dead_letter(self, step: _Step, dl: DeadLetter) -> None:
        try:
            self._put(step, self.deadletter_topic, dl.value, dl.key)
        except RecordTooLarge:
            log.error(
                "dead letter of %d bytes too large for Kafka; sent without the original",
                len(dl.value),
            )
            self._put(step, self.deadletter_topic, dead_letter_without_original(dl.value), None)

    def enqueue(self, record: Decision | DeadLetter) -> None:
        """Send ``record`` with the next publish (thread-safe; the sweep publishes every second)."""
        self._queued.append(record)

    def _produce_queued(self, step: _Step) -> None:
        queued = self._queued
        while queued:
            record = queued.popleft()
            if isinstance(record, Decision):
                self._produce_decision(step, None, record)
            else:
                self._produce_dead_letter(step, record)

    def _produce_outputs(self, step: _Step, out: Outputs) -> None:
        for dl in out.dead_letters:
            self._produce_dead_letter(step, dl)
        for fw in out.forwards:
            self._put(step, fw.topic, fw.value, fw.key, fw.partition, fw.headers)
        for partition, d in out.decisions:
            self._produce_decision(step, partition, d)

    def _produce_states(self, step: _Step, out: Outputs) -> None:
        encoded = out.encoded
        put, topic = self._put, self.changelog_topic
        for key, (partition, state) in out.changed.items():
            value = None
            if state is not None:
                value = self._state_value(topic, key, encoded.get(key) or state.to_bytes())
            put(step, topic, value, key, partition)

    def _direct(self, topic: str, partition: int) -> tuple[Any, Any] | None:
        """(aiokafka's accumulator, the partition) when records may go into the accumulator
        directly (``_queue_now``, ``_join_queued``); None when only ``send_batch`` may queue
        them: not started, the topic's metadata not in (it waits for it), or the accumulator
        closed or failed (it raises). The upstream code both repeat is pinned
        (tests/unit/test_publish_aiokafka_queue.py)."""
        acc = self._accumulator
        if acc is None or acc._closed or acc._exception is not None:
            return None
        known = self._metadata.partitions_for_topic(topic)
        if known is None or partition not in known:
            return None
        return acc, TopicPartition(topic, partition)

    def _queue_now(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any] | None:
        """Queue a filled record batch as ``send_batch`` would, without its two coroutines and
        the ``asyncio.shield`` around the batch's future (one future, callback and loop turn
        more per partition and step: a 7-partition step handed over and answered in 64-78
        against 108-114 us of CPU); None when ``send_batch`` must do it (``_direct``), or the
        partition has a batch queued still (``send_batch`` waits for it to go)."""
        direct = self._direct(topic, partition)
        if direct is None:
            return None
        acc, tp = direct
        if acc._batches.get(tp):
            return None
        future: asyncio.Future[Any] = acc._append_batch(batch, tp).future
        return future

    def _join_queued(self, step: _Step, topic: str, partition: int, records: list[Any]) -> int:
        """Add ``records`` (from the first) to the partition's last record batch while it is
        still queued (not drained into a request yet, never sent before), as aiokafka's own
        ``send()`` adds to it: they go in the request that takes it, where a batch of their own
        would wait for it to go first (the fetch loop held a round trip) and go in the request
        after. The step counts them in on that batch's future. The number added (0: none,
        e.g. nothing queued, a batch being retried, or full)."""
        direct = self._direct(topic, partition)
        if direct is None:
            return 0
        acc, tp = direct
        queued = acc._batches.get(tp)
        if not queued or queued[-1].retry_count:
            return 0
        last = queued[-1]
        builder, added = last._builder, 0
        for key, value, headers in records:
            if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                break  # full, or closed: the rest go in a batch of their own
            added += 1
        if added:
            step.add(last.future, topic, partition, added)
        return added

    async def _hand_over(self, step: _Step) -> None:
        """Give aiokafka the step's records, one record batch per partition (a future per
        batch, not per record); all partitions ready for a broker go in one request."""
        producer = self._producer
        waiting: list[tuple[str, int, Any, int]] = []
        for (topic, partition), records in step.records.items():
            joined = self._join_queued(step, topic, partition, records)
            if joined == len(records):
                continue
            batch, count = producer.create_batch(), 0
            for key, value, headers in records[joined:]:
                if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    # full (max_batch_size): this one goes, the rest start a new one
                    sent = await producer.send_batch(batch, topic, partition=partition)
                    step.add(sent, topic, partition, count)
                    batch, count = producer.create_batch(), 0
                    batch.append(timestamp=None, key=key, value=value, headers=headers)
                count += 1
            queued = self._queue_now(batch, topic, partition)
            if queued is None:
                waiting.append((topic, partition, batch, count))
            else:
                step.add(queued, topic, partition, count)
        # a partition whose previous batch is queued still and took no more (being retried,
        # full) waits for it to go (room in aiokafka's accumulator: never a drop;
        # KafkaTimeoutError after request_timeout_ms), once the step's other partitions are
        # queued: they go in the next request, not one more round trip later behind the wait
        for topic, partition, batch, count in waiting:
            sent = await producer.send_batch(batch, topic, partition=partition)
            step.add(sent, topic, partition, count)
        step.records = {}

    # ------------------------------------------------------------------ one batch
    async def publish_decisions_first(
        self,
        out: Outputs,
        before_state: Callable[[], None] | None = None,
        offsets: Offsets = (),
        group_metadata: Callable[[], bytes] | None = None,
    ) -> asyncio.Future[None]:
        """Publish one batch's outputs; return once its decisions are handed to aiokafka, with
        an awaitable that completes once the whole batch is durable (raising if it is not):
        acknowledge the input only then. ``offsets``/``group_metadata`` are exactly-once's
        and ignored (Faust's committer commits after the acknowledgement)."""
        await self.start()
        return await self._in_order(out, before_state)

    async def _decisions_step(self, out: Outputs) -> asyncio.Future[None]:
        return await self._step_of(
            self._produce_queued, lambda step: self._produce_outputs(step, out)
        )

    async def _states_step(self, out: Outputs) -> asyncio.Future[None]:
        return await self._step_of(lambda step: self._produce_states(step, out))

    async def _step_of(self, *produce: Callable[[_Step], None]) -> asyncio.Future[None]:
        """Run ``produce`` steps into one ``_Step`` and hand its records to aiokafka: its future
        completes once aiokafka has acknowledged every one; a record refused raises here."""
        step = _Step(self._bootstrap, self._options["request_timeout_ms"] / 1000)
        try:
            for one in produce:
                one(step)
            await self._hand_over(step)
        finally:
            step.seal()
        return step.future
