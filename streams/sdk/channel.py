"""Carries one client's requests to Kafka, in order, and its decisions back to their waiters.

How a request finds its decision:

* the worker publishes every decision of a run on ``gov.decisions``, partition
  ``partition_for(run_id)``, with the request's ``request_id`` and a ``phase``;
* a client reads only the partitions its runs hash to. It ``assign()``s them by hand (no
  consumer group: a group join takes seconds on Tansu and would spread partitions over
  clients) starting from the partition's end offset, read *before* its first request is
  produced, so no decision can slip in between;
* callers register a waiter under ``(run_id, request_id, phase)`` before they publish
  (``waiters.WaiterBook``); the thread parses only the records whose key is awaited and
  resolves their waiters.

Order: records of one run leave this client in the order they were submitted, also while
their partition is still being assigned (they queue behind the assignment, in order), so
"the 9th handoff is stopped" means the 9th that was submitted. No submitted record is
dropped: when an assignment fails (broker frozen or away), the callers queued behind it get
their fail-closed answer at once and their records go to librdkafka all the same, which
delivers them or reports a delivery error.

Not guaranteed: a request whose decision arrives after its waiter gave up is decided all the
same (it counts against the run's budget, the safe direction); Tansu's ListOffsets reports
the start of the last record batch rather than the log end, so a client may re-read part of
that batch after an assignment (harmless: it only looks for its own request_ids).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from baton.schemas.decision import DECISION_ADAPTER, Decision
from baton.schemas.errors import BrokerUnavailable, TopicMismatch
from baton.streams.kafka import consumer_config, kafka_said, producer_config, undelivered
from baton.streams.partitioner import partition_for
from baton.streams.sdk.options import ClientOptions, checked_seconds
from baton.streams.sdk.reach import BrokerWatch
from baton.streams.sdk.unsigned import UnsignedDecisions
from baton.streams.sdk.waiters import Unanswered, Waiter, WaiterBook, WaitKey, resolve

__all__ = ["RequestChannel"]

log = logging.getLogger("baton.client")
# librdkafka's own log lines (connection refused, retries...): an SDK must not write to its host
# application's stderr unless the application configured logging (the NullHandler keeps
# Python's last-resort handler away); the errors that matter surface as BrokerUnavailable or
# in the detail of a governance_unavailable decision
_KAFKA_LOG = logging.getLogger("baton.client.kafka")
_KAFKA_LOG.addHandler(logging.NullHandler())

#: the largest record a worker publishes (librdkafka's message.max.bytes, the aiokafka
#: publisher's MAX_RECORD_BYTES). The reader parsed every record of its partitions to find
#: its key: one 50 MB record written to gov.decisions (Tansu takes any size) cost every client
#: reading that partition 0.8 s of its reader and +570 MB at its peak
MAX_DECISION_BYTES = 1_000_000


@dataclass(slots=True)
class _Gate:
    """A decisions partition: requests wait here, in order, until it is assigned."""

    ready: bool = False
    queued: list[tuple[str, bytes, bytes, WaitKey | None]] = field(default_factory=list)


class RequestChannel:
    """The Kafka side of one client; every public client class wraps one of these."""

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.catalog = options.catalog
        self.partitions = options.partitions or options.catalog.partitions
        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False
        self._gates: dict[int, _Gate] = {}
        self._wanted: deque[int] = deque()
        self.waiters = WaiterBook()
        #: the reader thread has returned (it no longer calls the consumer)
        self._reader_done = False
        self._delivery_errors: deque[str] = deque(maxlen=20)
        #: what librdkafka reported of the brokers (error_cb of the producer and consumer)
        self.brokers = BrokerWatch(options.bootstrap)
        self.decisions_read = 0
        #: decisions under an awaited key that no key of ``decision_keys`` signed
        self.unsigned = UnsignedDecisions()

    # ------------------------------------------------------------------ connection
    @property
    def connected(self) -> bool:
        return self._producer is not None

    def connect(self) -> None:
        """Reach Kafka, check Baton's topics, start the decision reader. Idempotent.

        Raises ``BrokerUnavailable`` naming the bootstrap address when Kafka cannot be reached
        or Baton's topics are missing, ``TopicMismatch`` when partition counts disagree.
        """
        with self._connect_lock:
            if self._producer is not None:
                return
            if self._closed:
                raise BrokerUnavailable("this Baton client is closed")
            opts = self.options
            producer = Producer(
                producer_config(
                    opts.kafka_config,
                    {
                        # a check waits for its request: send it at once rather than after
                        # librdkafka's 5 ms linger (batches still form under load)
                        "linger.ms": 1,
                        # the worker reads requests with aiokafka, which cannot decompress lz4
                        # (or snappy/zstd) without cramjam: a compressed batch crashes it
                        "compression.type": "none",
                        "logger": _KAFKA_LOG,
                        "message.timeout.ms": int(opts.delivery_timeout_s * 1000),
                        "client.id": opts.client_id,
                        "error_cb": self.brokers.on_error,
                    },
                )
            )
            self.partitions = self._check_topics(producer)
            consumer = Consumer(
                consumer_config(
                    opts.kafka_config,
                    # never joined (partitions are assign()ed) and never committed
                    f"{opts.client_id}-{uuid.uuid4().hex[:12]}",
                    {
                        # Tansu holds every fetch for its full max wait, even when records
                        # arrive: this bounds the time a decision waits to be read there
                        "fetch.wait.max.ms": opts.fetch_wait_ms,
                        "logger": _KAFKA_LOG,
                        "enable.partition.eof": False,
                        "client.id": opts.client_id,
                        "error_cb": self.brokers.on_error,
                    },
                )
            )
            self._consumer = consumer
            self._thread = threading.Thread(
                target=self._run, name="baton-client-decisions", daemon=True
            )
            self._thread.start()
            self._producer = producer

    def _check_topics(self, producer: Producer) -> int:
        opts = self.options
        # a dead port is named with librdkafka's words at once, not "timed out" after 10 s
        metadata = self.brokers.list_topics(producer, opts.connect_timeout_s)
        counts = {name: len(t.partitions) for name, t in metadata.topics.items()}
        run_keyed = [self.catalog.requests, self.catalog.approvals, self.catalog.decisions]
        missing = [name for name in [*run_keyed, self.catalog.control] if name not in counts]
        if missing:
            raise BrokerUnavailable(
                f"Kafka at {opts.bootstrap} has no topic {', '.join(missing)}: start Baton there "
                f"(`baton up`, or `baton worker --bootstrap {opts.bootstrap}`), or set the "
                f"topic prefix it uses (BATON_TOPIC_PREFIX, now {self.catalog.prefix!r})"
            )
        found = {counts[name] for name in run_keyed}
        expected = opts.partitions or counts[self.catalog.decisions]
        if found != {expected}:
            detail = ", ".join(f"{name}={counts[name]}" for name in run_keyed)
            raise TopicMismatch(
                f"Baton's run-keyed topics at {opts.bootstrap} must all have {expected} "
                f"partitions, found {detail}; the client would look for decisions on the "
                "wrong partition (unset BATON_PARTITIONS to use the broker's count)"
            )
        return expected

    # ------------------------------------------------------------------ publishing
    def partition_of(self, run_id: str) -> int:
        return partition_for(run_id.encode(), self.partitions)

    def submit(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        *,
        decisions_partition: int,
        wait_key: WaitKey | None = None,
        waiter: Waiter | None = None,
        needs_reply: bool = True,
    ) -> None:
        """Publish one record behind ``decisions_partition``'s assignment, and register a waiter.

        ``needs_reply`` False (a kill, a finish nobody waits for) still queues behind a pending
        assignment of that partition, so the run's records keep their order, but does not
        trigger one.
        """
        if self._producer is None:
            raise RuntimeError("RequestChannel.submit before connect()")
        if waiter is not None and wait_key is not None:
            self.waiters.register(wait_key, waiter)
        with self._lock:
            gate = self._gates.get(decisions_partition)
            if gate is None and not needs_reply:
                self._produce(topic, key, value)
                return
            if gate is None:
                gate = self._gates[decisions_partition] = _Gate()
                self._wanted.append(decisions_partition)
            if gate.ready:
                self._produce(topic, key, value)
            else:
                gate.queued.append((topic, key, value, wait_key))

    def publish(self, topic: str, key: bytes, value: bytes) -> None:
        """Publish a record that has no decision partition to order behind (the control topic)."""
        if self._producer is None:
            raise RuntimeError("RequestChannel.publish before connect()")
        self._produce(topic, key, value)

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        producer = self._producer
        assert producer is not None
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=self._on_delivery)
                return
            except BufferError:
                # librdkafka's local queue is full: let it send, then try again (never drop)
                producer.poll(0.01)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        failed = undelivered(err, msg)
        if failed is not None:
            text = f"could not deliver to {failed}"
            self._delivery_errors.append(text)
            log.warning("Kafka at %s: %s", self.options.bootstrap, text)

    def last_delivery_error(self) -> str | None:
        return self._delivery_errors[-1] if self._delivery_errors else None

    def flush(self, timeout: float) -> int:
        """Wait until every published record is acknowledged; return how many were not."""
        timeout = checked_seconds("timeout", timeout, zero=True)
        if self._producer is None:
            return 0
        return int(self._producer.flush(timeout))

    # ------------------------------------------------------------------ the reader thread
    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        last_prune = time.monotonic()
        try:
            while not self._stopping.is_set():
                if self._wanted:
                    self._assign_wanted(consumer)
                if self._producer is not None:
                    self._producer.poll(0)  # delivery reports
                messages = consumer.consume(1000, timeout=0.05)
                if messages:
                    self._dispatch(messages)
                now = time.monotonic()
                if now - last_prune > 5.0:
                    last_prune = now
                    self.waiters.prune_parked()
        except Exception:  # a dead reader would turn every check into a timeout: say why
            log.critical("the Baton client's decision reader crashed", exc_info=True)
            self._fail_everyone("the client's decision reader crashed (see the log)")
            raise
        finally:
            self._close_consumer(by_reader=True)

    def _assign_wanted(self, consumer: Consumer) -> None:
        topic = self.catalog.decisions
        while self._wanted:
            partition = self._wanted.popleft()
            tp = TopicPartition(topic, partition)
            try:
                # the end offset *before* any request of ours is produced: every decision to
                # one of them lands at or after it
                _low, high = consumer.get_watermark_offsets(
                    tp, timeout=self.options.connect_timeout_s, cached=False
                )
                consumer.incremental_assign([TopicPartition(topic, partition, max(high, 0))])
            except KafkaException as exc:
                detail = (
                    f"cannot read {topic}[{partition}] from Kafka at "
                    f"{self.options.bootstrap}: {kafka_said(exc)}; "
                    "the record was still handed to Kafka and may be decided later"
                )
                log.warning("%s", detail)
                self._fail_gate(partition, detail)
                continue
            with self._lock:
                gate = self._gates[partition]
                self._produce_queued(gate.queued)
                gate.queued.clear()
                gate.ready = True

    def _fail_gate(self, partition: int, detail: str) -> None:
        """Answer the waiters queued behind ``partition``'s failed assignment (fail closed),
        and still hand their records to librdkafka, in order.

        A record is never dropped here: it is delivered (and decided, too late for its caller:
        a late check is stopped ``request_expired`` by its ``decide_by``, a late cost report
        still counts against the run's budget) or reported as a delivery error. Dropped, a
        check sent into a frozen broker vanished whenever this read of the end offset timed
        out just before the broker woke (2 runs of 3 of test_broker_pause under load).
        """
        with self._lock:
            gate = self._gates.pop(partition, None)
            queued = gate.queued if gate is not None else []
            self._produce_queued(queued)
        keys = [q[3] for q in queued if q[3] is not None]
        unanswered = Unanswered(detail)
        resolve([(w, unanswered) for w in self.waiters.take_all(keys)])

    def _dispatch(self, messages: list[Any]) -> None:
        book, keys = self.waiters, self.options.decision_keys
        resolved: list[tuple[Waiter, Decision | Unanswered]] = []
        for msg in messages:
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("reading %s: %s", self.catalog.decisions, msg.error())
                continue
            self.decisions_read += 1
            value = msg.value() or b""
            if len(value) > MAX_DECISION_BYTES:
                continue  # no worker's decision (see MAX_DECISION_BYTES): never parsed
            try:
                doc = orjson.loads(value)
                key = (doc["run_id"], doc["request_id"], doc["phase"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            if type(key[0]) is not str or type(key[1]) is not str or type(key[2]) is not str:
                # a list or map there (anyone who can write gov.decisions) made the key
                # unhashable: the reader raised, and every check of this client failed closed
                continue
            # cheap unlocked look first: most records are other runs' (other clients')
            if not book.awaited(key):
                continue
            if keys and not keys.verifies(value):  # (no headers(): decision_signing's doc)
                self.unsigned.ignored(msg, key)  # forged, or signed with no key of ours
                continue
            try:
                decision = DECISION_ADAPTER.validate_python(doc)
            except ValueError as exc:
                where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
                why = str(exc).splitlines()[0]
                log.error("%s is not a Decision: %s", where, why)
                # an answer under the key, unreadable: never waited out into a fail-open allow
                unreadable = Unanswered(
                    f"Baton's answer {where} is not a decision this client reads ({why[:200]})",
                    unreadable=True,
                )
                resolved.extend((w, unreadable) for w in book.take_all([key]))
                continue
            resolved.extend((w, decision) for w in book.take(key, decision))
        if resolved:
            resolve(resolved)

    def _fail_everyone(self, detail: str) -> None:
        unanswered = Unanswered(detail)
        resolve([(w, unanswered) for w in self.waiters.take_everyone()])

    # ------------------------------------------------------------------ shutdown
    def close(self, timeout: float = 10.0) -> None:
        """Deliver what was published (up to ``timeout``), answer pending waiters, stop.

        Records still queued behind a decisions partition's assignment are handed to
        librdkafka first (nobody will wait for their decisions: their waiters are answered
        fail-closed), so the flush delivers them too. A reader stuck in a read (a frozen
        broker) is not waited for past ``timeout``: it closes the consumer when its call
        returns (closing it under the call blocked for the call's whole timeout and crashed
        the reader)."""
        timeout = checked_seconds("timeout", timeout, zero=True)
        with self._connect_lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._hand_over_queued()
        left = self.flush(timeout)
        if left:
            log.warning(
                "closing with %d records not delivered to Kafka at %s", left, self.options.bootstrap
            )
        if self._thread is not None:
            self._thread.join(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        self._fail_everyone("the Baton client was closed")
        self._close_consumer(by_reader=False)

    def _hand_over_queued(self) -> None:
        """Hand every record queued behind an assignment to librdkafka, in order (closing)."""
        with self._lock:
            for gate in self._gates.values():
                self._produce_queued(gate.queued)
                gate.queued.clear()

    def _produce_queued(self, queued: list[tuple[str, bytes, bytes, WaitKey | None]]) -> None:
        """Hand records queued behind an assignment to librdkafka, in order (under _lock)."""
        for topic, key, value, _wait_key in queued:
            self._produce(topic, key, value)

    def _close_consumer(self, *, by_reader: bool) -> None:
        """Close the consumer once both the reader has ended and the channel is closed; whoever
        comes second closes it (never under a reader's call)."""
        with self._lock:
            if by_reader:
                self._reader_done = True
            if not (self._reader_done or self._thread is None) or not self._closed:
                return
            consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()
