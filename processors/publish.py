"""Publishes one batch's outputs with a confluent-kafka producer.

Faust's per-message produce path is the worker's bottleneck (ARCHITECTURE.md, "Hot path"),
so decisions, stops, dead letters, forwards *and* the ``runs`` table's changelog records go
through one librdkafka producer. ``publish`` returns only when every record is acknowledged;
a record that cannot be delivered raises, and the caller must die without committing offsets.

Two modes:

* at-least-once (default, idempotent producer): decisions first and flushed, then the states
  that produced them (flushed while the worker fetches and decides its next batch), then the
  caller acknowledges the batch to Faust, whose committer commits the offsets later. A
  crash in between redelivers the batch; the engine's dedup marks keep that from counting
  anything twice. One flush is on a decision's path, one more before the input is committed.
* exactly-once (``transactional_id`` given): one Kafka transaction per batch holds its
  decisions, stops, dead letters, forwards, changelog records *and* the input offsets
  (``send_offsets_to_transaction``); consumers reading ``read_committed`` (librdkafka's
  default) see all of a batch or nothing of it, and a crash leaves no half-written batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from baton.processors.batch import DeadLetter, Outputs
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome
from baton.schemas.errors import BrokerUnavailable

__all__ = ["BatchPublisher", "DeliveryFailed"]

log = logging.getLogger(__name__)


#: what a dead letter keeps when it is too large for Kafka
_DEAD_LETTER_HEAD = (
    "error_kind", "error", "topic", "partition", "offset", "key_size", "worker", "failed_at",
    "original_size",
)  # fmt: skip


class DeliveryFailed(BrokerUnavailable):
    """A record could not be delivered within librdkafka's message.timeout.ms."""


class TransactionFailed(BrokerUnavailable):
    """A batch's transaction could not be committed (it was aborted: nothing of it is visible)."""


#: how long a flush may block the event loop before its wait moves to a thread
_FLUSH_ON_LOOP_S = 0.005

#: (topic, partition, next offset to read): the input offsets a transaction commits
Offsets = Sequence[tuple[str, int, int]]


def _done() -> asyncio.Future[None]:
    """A future that is complete already: nothing left to wait for."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


class BatchPublisher:
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
        conf = {
            # murmur2: must match Faust's partitioner or a run's events split across workers
            "partitioner": "murmur2_random",
            "linger.ms": 5,
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

    # ------------------------------------------------------------------ low level
    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None = None,
        headers: Any = None,
    ) -> None:
        produce = self._producer.produce
        kwargs: dict[str, Any] = {"on_delivery": self._on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                produce(topic, value, key, **kwargs)
                return
            except BufferError:
                # local queue full: let librdkafka send, then try again (never drop)
                self._producer.poll(0.05)

    def produce_decision(self, partition: int | None, d: Decision) -> None:
        raw = d.to_json()
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
            # belt and braces (dead letters are capped when made): one record too big for
            # Kafka must not end the worker on every restart; keep what was wrong and where
            log.error(
                "dead letter of %d bytes too large for Kafka; sent without the original",
                len(dl.value),
            )
            doc = orjson.loads(dl.value)
            short = {k: doc.get(k) for k in _DEAD_LETTER_HEAD}
            short["original_dropped"] = "too large for Kafka"
            self._produce(self.deadletter_topic, orjson.dumps(short), None)

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
        if state is not None and encoded is None:
            encoded = state.to_bytes()
        self._produce(self.changelog_topic, encoded if state is not None else None, key, partition)

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
    async def publish(
        self,
        out: Outputs,
        before_state: Callable[[], None] | None = None,
        offsets: Offsets = (),
        group_metadata: Callable[[], bytes] | None = None,
    ) -> None:
        """Publish one batch's outputs; return once they are durable, raise if they are not.

        ``before_state`` may raise to keep the states unwritten (the worker checks it still
        owns the partitions). ``offsets`` and ``group_metadata`` are for exactly-once: the
        input offsets committed with the batch's transaction (ignored otherwise: Faust's
        committer commits them after the caller acknowledges the batch).
        """
        await (await self.publish_decisions_first(out, before_state, offsets, group_metadata))

    async def publish_decisions_first(
        self,
        out: Outputs,
        before_state: Callable[[], None] | None = None,
        offsets: Offsets = (),
        group_metadata: Callable[[], bytes] | None = None,
    ) -> asyncio.Future[None]:
        """Publish one batch's outputs; return once its decisions are acknowledged, with an
        awaitable that completes once the whole batch is durable (raising if it is not).

        At-least-once: the decisions (and dead letters, forwards) are flushed; then the run
        states are handed to librdkafka and flushed *in the background*, so the caller can
        fetch and decide the next batch meanwhile (it acknowledges this batch's input only
        when the awaitable completes). The states still go out only after the decisions are
        acknowledged: a crash can never leave a state that remembers a decision nobody got.
        Exactly-once: one transaction; the awaitable is already complete.
        """
        if self.transactional:
            await self._publish_transaction(out, before_state, offsets, group_metadata)
            return _done()
        self._produce_queued()
        self._produce_outputs(out)
        await self._flush()
        if not out.changed:
            return _done()
        if before_state is not None:
            before_state()
        # One flush for all of them, the last record of a partition included: Tansu answers
        # ListOffsets(latest) with the first offset of the partition's last record batch + 1,
        # which made Faust's recovery skip the tail of a batch-written changelog; recovery
        # now reads to the end a fetch reports (streams.transactions.committed_ends).
        encoded = out.encoded
        for key, (partition, state) in out.changed.items():
            self.produce_state(key, partition, state, encoded.get(key))
        return asyncio.ensure_future(self._flush())

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
            await loop.run_in_executor(None, self._init_transactions)
        try:
            producer.begin_transaction()
            self._produce_queued()
            self._produce_outputs(out)
            for key, (partition, state) in out.changed.items():
                self.produce_state(key, partition, state, out.encoded.get(key))
            if before_state is not None:
                before_state()
            metadata = group_metadata() if offsets and group_metadata is not None else None
            commit = loop.run_in_executor(None, self._commit, offsets, metadata)
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
            await loop.run_in_executor(None, self._abort)
            if isinstance(exc, KafkaException):
                raise TransactionFailed(
                    f"transaction with Kafka at {self._bootstrap} failed and was aborted: "
                    f"{exc.args[0].str() if exc.args else exc}"
                ) from exc
            raise

    def _init_transactions(self) -> None:
        try:
            self._producer.init_transactions(30)
        except KafkaException as exc:
            raise TransactionFailed(
                f"cannot start transactions with Kafka at {self._bootstrap}: {exc.args[0].str()}"
            ) from exc
        self._txn_ready = True

    def _commit(self, offsets: Offsets, metadata: bytes | None) -> None:
        producer = self._producer
        timeout = self._txn_timeout_s
        if offsets and metadata is not None:
            producer.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for t, p, o in offsets], metadata, timeout
            )
        deadline = time.monotonic() + 3 * timeout  # a few attempts of `timeout` each
        while True:
            try:
                producer.commit_transaction(timeout)
                break
            except KafkaException as exc:
                # a retriable error (e.g. a timeout) leaves the commit in progress: calling
                # commit again resumes it; anything else aborts (or is fatal) in the caller
                err = exc.args[0] if exc.args else None
                if err is None or not err.retriable() or time.monotonic() > deadline:
                    raise
                log.warning("committing a transaction with Kafka at %s: %s; retrying",
                            self._bootstrap, err.str())  # fmt: skip
        if self._errors:  # commit fails first if a record failed; belt and braces
            errors, self._errors = self._errors, []
            raise DeliveryFailed(f"could not deliver {len(errors)} records: {errors[:3]}")

    def _abort(self) -> None:
        self._errors.clear()
        try:
            self._producer.abort_transaction(30)
        except KafkaException as exc:  # fatal or fenced: the process exits anyway
            log.warning("aborting the transaction failed: %s", exc)

    async def _flush(self) -> None:
        # Most flushes take about one broker round trip: wait that long right here. Handing
        # every wait to a thread and back cost ~10 ms a batch on a busy 2-core host (worker
        # and relay side by side in bench/latency_bench.py), more than the round trip. A
        # flush still waiting after _FLUSH_ON_LOOP_S goes on in a thread (librdkafka's flush
        # blocks without the GIL), so the event loop keeps serving Faust meanwhile.
        if self._producer.flush(_FLUSH_ON_LOOP_S) == 0:
            self.flush(0)  # raises DeliveryFailed for any record that failed
            return
        await asyncio.get_running_loop().run_in_executor(None, self.flush)
