"""Publishes one batch's outputs with a confluent-kafka producer.

Faust's per-message produce path is the worker's bottleneck (ARCHITECTURE.md, "Hot path"),
so decisions, stops, dead letters, forwards *and* the ``runs`` table's changelog records go
through one librdkafka producer. A record that cannot be delivered fails its batch, and the
caller must die without committing offsets.

Two modes:

* at-least-once (default, idempotent producer), **pipelined**: a batch's decisions (and dead
  letters, forwards) are handed to librdkafka and the worker goes on to fetch and decide the
  next batch at once; each record's delivery report counts it off its step (no flush on a
  decision's path: a flush waits for every record in flight, the next batches' too). Once
  every decision of the batch is acknowledged, and the previous batch's states were sent,
  its run states are sent; once those are acknowledged too (and the previous batch was),
  the batch is durable and the caller acknowledges its input to Faust, whose committer
  commits the offsets later. So a state never reaches the changelog before the decisions it
  remembers, a run's states reach it in batch order, and the input is committed only after
  both. A crash in between redelivers the batch; the engine's dedup marks keep that from
  counting anything twice.
* exactly-once (``transactional_id`` given): one Kafka transaction per batch holds its
  decisions, stops, dead letters, forwards, changelog records *and* the input offsets
  (``send_offsets_to_transaction``); consumers reading ``read_committed`` (librdkafka's
  default) see all of a batch or nothing of it, and a crash leaves no half-written batch.

Delivery reports are served by ``poll(0)`` on the event loop (at each batch, and every
``_POLL_S`` while records are in flight), never in another thread: a wait handed to a
thread and back cost more than the broker's round trip on a busy 2-core host
(bench/RESULTS.md). The counting is ``publish_delivery``; a transaction's librdkafka calls
are ``publish_transaction``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from baton.processors import publish_transaction as transaction
from baton.processors.batch import DeadLetter, Outputs
from baton.processors.batch_records import dead_letter_without_original
from baton.processors.publish_delivery import DeliveryFailed, DeliveryStep
from baton.processors.publish_order import PipelinedOrder, done_future
from baton.processors.publish_transaction import Offsets, TransactionFailed, init_transactions
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome
from baton.streams.kafka import kafka_said, undelivered

__all__ = ["BatchPublisher", "DeliveryFailed", "TransactionFailed"]

log = logging.getLogger(__name__)


#: how often the event loop serves delivery reports while records are in flight and no
#: batch comes (each batch serves them first); they gate only run states and
#: acknowledgements, never a decision's visibility, and a timer per millisecond or two
#: cost the worker CPU per event on a busy host
_POLL_S = 0.01
#: librdkafka's linger.ms for the worker's producer
_LINGER_MS = 0


class BatchPublisher(PipelinedOrder):
    def __init__(
        self,
        producer_conf: dict[str, Any],
        *,
        decisions_topic: str,
        stops_topic: str,
        deadletter_topic: str,
        changelog_topic: str,
        transactional_id: str | None = None,
        transaction_timeout_ms: int = 10_000,
    ) -> None:
        super().__init__()
        conf = {
            # murmur2: must match Faust's partitioner or a run's events split across workers
            "partitioner": "murmur2_random",
            # no flush on a decision's path (pipelined): a batch's records are produced in one
            # go, and waiting up to linger.ms for more would be every decision's latency
            "linger.ms": _LINGER_MS,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500000,
            # no compression: records are small and the broker is usually near; (aiokafka,
            # which reads our changelog, decodes lz4/snappy/zstd only through cramjam, a
            # dependency since an lz4 batch once crashed the worker's fetcher)
            "compression.type": "none",
            # idempotence keeps a retried batch from reordering a run's forwarded events
            "enable.idempotence": True,
            "acks": "all",
            # a record undeliverable this long ends the worker (exit 75, nothing committed);
            # kept under the group's patience so a stuck worker leaves before it is fenced
            "message.timeout.ms": 60000,
            # librdkafka's own lines (a retry every 50 ms while the broker is away) go to
            # Python logging, quiet unless -v; the worker logs its own line per failure
            "logger": logging.getLogger("baton.kafka"),
            **producer_conf,
        }
        if transactional_id is not None:
            conf["transactional.id"] = transactional_id
            # an open transaction of a crashed worker holds back every read_committed reader
            # of its partitions (including the worker that takes them over) until it times out
            conf["transaction.timeout.ms"] = transaction_timeout_ms
            conf["message.timeout.ms"] = min(conf["message.timeout.ms"], transaction_timeout_ms)
        self.transactional = transactional_id is not None
        self._txn_timeout_s = transaction_timeout_ms / 1000
        self._txn_ready = False
        self._producer = Producer(conf)
        self._bootstrap = conf.get("bootstrap.servers", "?")
        self.decisions_topic = decisions_topic
        self.stops_topic = stops_topic
        self.deadletter_topic = deadletter_topic
        self.changelog_topic = changelog_topic
        self._errors: list[str] = []
        #: records from other threads (the control follower), sent with the next publish:
        #: a transactional producer accepts records only inside the transaction of a batch
        self._queued: deque[Decision | DeadLetter] = deque()
        #: at-least-once: the step records produced now count towards (None: flush-based)
        self._step: DeliveryStep | None = None
        #: steps whose delivery reports are still due (served by _poll on the loop)
        self._in_flight: set[DeliveryStep] = set()
        self._poll_timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Nothing to start: librdkafka connects in the background (the same call as the
        aiokafka publisher's, which connects on the worker's loop)."""

    # ------------------------------------------------------------------ low level
    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        failed = undelivered(err, msg)
        if failed is not None:
            self._errors.append(failed)

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None = None,
        headers: Any = None,
    ) -> None:
        produce = self._producer.produce
        step = self._step
        kwargs: dict[str, Any] = {
            "on_delivery": self._on_delivery if step is None else step.on_delivery
        }
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                produce(topic, value, key, **kwargs)
                if step is not None:  # counted once librdkafka took it (a refusal raised)
                    step.count += 1
                return
            except BufferError:
                # local queue full: let librdkafka send, then try again (never drop)
                self._producer.poll(0.05)

    def produce_decision(self, partition: int | None, d: Decision) -> None:
        raw = self._signed(d.to_json())
        key = d.run_id.encode()
        self._produce(self.decisions_topic, raw, key, partition)
        if d.outcome == Outcome.STOP:
            self._produce(self.stops_topic, raw, key, partition)

    def produce_dead_letter(self, dl: DeadLetter) -> None:
        try:
            self._produce(self.deadletter_topic, dl.value, dl.key)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise
            log.error(
                "dead letter of %d bytes too large for Kafka; sent without the original",
                len(dl.value),
            )
            self._produce(self.deadletter_topic, dead_letter_without_original(dl.value), None)

    def enqueue(self, record: Decision | DeadLetter) -> None:
        """Send ``record`` with the next publish (thread-safe; the sweep publishes every second)."""
        self._queued.append(record)

    def _produce_queued(self) -> None:
        queued = self._queued
        while queued:
            record = queued.popleft()
            if isinstance(record, Decision):
                self.produce_decision(None, record)
            else:
                self.produce_dead_letter(record)

    def produce_state(
        self, key: bytes, partition: int, state: RunState | None, encoded: bytes | None = None
    ) -> None:
        """Write a run's state (None: delete it); ``encoded`` is its bytes if already made."""
        topic, value = self.changelog_topic, None
        if state is not None:
            raw = encoded if encoded is not None else state.to_bytes()
            value = self._state_value(topic, key, raw)
        self._produce(topic, value, key, partition)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every queued record is acknowledged; raise if any failed."""
        remaining = self._producer.flush(timeout)
        while remaining:
            log.warning(
                "waiting for Kafka at %s: %d records not yet acknowledged",
                self._bootstrap,
                remaining,
            )
            remaining = self._producer.flush(timeout)
        if self._errors:
            errors, self._errors = self._errors, []
            raise DeliveryFailed(
                f"could not deliver {len(errors)} records to Kafka at {self._bootstrap}: "
                + "; ".join(errors[:3])
            )

    # ------------------------------------------------------------------ one batch
    async def publish_decisions_first(
        self,
        out: Outputs,
        before_state: Callable[[], None] | None = None,
        offsets: Offsets = (),
        group_metadata: Callable[[], bytes] | None = None,
    ) -> asyncio.Future[None]:
        """Publish one batch's outputs; return once its decisions are handed to librdkafka,
        with an awaitable that completes once the whole batch is durable (raising if it is
        not): acknowledge the input only then.

        At-least-once: the run states are sent once every decision (dead letter, forward) of
        the batch is acknowledged and the previous batch's states were sent; ``before_state``
        is called right before (it may raise to keep them unwritten: the worker checks it
        still owns the partitions). The caller fetches and decides the next batch meanwhile.
        Exactly-once: one transaction, committed before this returns; the awaitable is
        complete already.
        """
        if self.transactional:
            await self._publish_transaction(out, before_state, offsets, group_metadata)
            return done_future()
        self._producer.poll(0)  # the reports that came in since the last batch
        return await self._in_order(out, before_state)

    async def _decisions_step(self, out: Outputs) -> asyncio.Future[None]:
        return self._send(self._produce_queued, lambda: self._produce_outputs(out))

    async def _states_step(self, out: Outputs) -> asyncio.Future[None]:
        encoded = out.encoded
        return self._send(
            lambda: [
                self.produce_state(key, partition, state, encoded.get(key))
                for key, (partition, state) in out.changed.items()
            ]
        )

    def _send(self, *produce: Callable[[], None]) -> asyncio.Future[None]:
        """Run ``produce`` steps into one ``DeliveryStep``: its future completes once librdkafka has
        acknowledged every record they produced."""
        step = DeliveryStep(self._bootstrap)
        self._step = step
        try:
            for one in produce:
                one()
        finally:
            self._step = None
        step.seal()
        if not step.future.done():
            self._in_flight.add(step)
            if self._poll_timer is None:
                self._poll_timer = step.loop.call_later(_POLL_S, self._poll)
        return step.future

    def _poll(self) -> None:
        """Serve delivery reports (on the loop's thread) while any step is waiting for them."""
        self._poll_timer = None
        self._producer.poll(0)
        self._in_flight = {step for step in self._in_flight if not step.future.done()}
        if self._in_flight:
            self._poll_timer = asyncio.get_running_loop().call_later(_POLL_S, self._poll)

    def _produce_outputs(self, out: Outputs) -> None:
        for dl in out.dead_letters:
            self.produce_dead_letter(dl)
        for fw in out.forwards:
            self._produce(fw.topic, fw.value, fw.key, fw.partition, fw.headers)
        for partition, d in out.decisions:
            self.produce_decision(partition, d)

    async def _publish_transaction(
        self,
        out: Outputs,
        before_state: Callable[[], None] | None,
        offsets: Offsets,
        group_metadata: Callable[[], bytes] | None,
    ) -> None:
        busy = offsets or self._queued or out.decisions or out.dead_letters or out.forwards
        if not (busy or out.changed):
            return  # an idle sweep: no empty transaction every second
        loop = asyncio.get_running_loop()
        producer = self._producer
        if not self._txn_ready:
            await loop.run_in_executor(None, init_transactions, producer, self._bootstrap)
            self._txn_ready = True
        try:
            producer.begin_transaction()
            self._produce_queued()
            self._produce_outputs(out)
            for key, (partition, state) in out.changed.items():
                self.produce_state(key, partition, state, out.encoded.get(key))
            if before_state is not None:
                before_state()
            metadata = group_metadata() if offsets and group_metadata is not None else None
            commit = loop.run_in_executor(
                None,
                transaction.commit,
                producer,
                offsets,
                metadata,
                self._txn_timeout_s,
                self._bootstrap,
                self._errors,
            )
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                # shutting down mid-commit: let the commit finish (it may already have
                # landed) instead of racing an abort against it from another thread
                await asyncio.wait([commit])
                raise
        except asyncio.CancelledError:
            raise  # the commit above either finished or failed on its own: nothing to abort
        except BaseException as exc:
            await loop.run_in_executor(None, transaction.abort, producer, self._errors)
            if isinstance(exc, KafkaException):
                raise TransactionFailed(
                    f"transaction with Kafka at {self._bootstrap} failed and was aborted: "
                    f"{kafka_said(exc)}"
                ) from exc
            raise
