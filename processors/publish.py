"""Publishes one batch's outputs with a confluent-kafka producer: decisions first, then state.

Faust's per-message produce path is the worker's bottleneck (ARCHITECTURE.md, "Hot path"),
so decisions, stops, dead letters, forwards *and* the ``runs`` table's changelog records go
through one librdkafka producer. ``publish`` returns only when every record is acknowledged;
a record that cannot be delivered raises, and the caller must die without committing offsets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Producer

from baton.processors.batch import DeadLetter, Outputs
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome
from baton.schemas.errors import BrokerUnavailable

__all__ = ["BatchPublisher", "DeliveryFailed"]

log = logging.getLogger(__name__)


class DeliveryFailed(BrokerUnavailable):
    """A record could not be delivered within librdkafka's message.timeout.ms."""


class BatchPublisher:
    def __init__(
        self,
        producer_conf: dict[str, Any],
        *,
        decisions_topic: str,
        stops_topic: str,
        deadletter_topic: str,
        changelog_topic: str,
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
            **producer_conf,
        }
        self._producer = Producer(conf)
        self._bootstrap = conf.get("bootstrap.servers", "?")
        self.decisions_topic = decisions_topic
        self.stops_topic = stops_topic
        self.deadletter_topic = deadletter_topic
        self.changelog_topic = changelog_topic
        self._errors: list[str] = []

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
        self._produce(self.deadletter_topic, dl.value, dl.key)

    def produce_state(self, key: bytes, partition: int, state: RunState | None) -> None:
        self._produce(self.changelog_topic, state.to_bytes() if state else None, key, partition)

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
    async def publish(self, out: Outputs, before_state: Callable[[], None] | None = None) -> None:
        """Decisions, stops, dead letters and forwards; flush; then the state changes; flush.

        ``before_state`` runs between the two and may raise to keep the states unwritten
        (the worker checks it still owns the partitions).
        """
        for dl in out.dead_letters:
            self.produce_dead_letter(dl)
        for fw in out.forwards:
            self._produce(fw.topic, fw.value, fw.key, fw.partition, fw.headers)
        for partition, d in out.decisions:
            self.produce_decision(partition, d)
        await self._flush()
        if out.changed:
            if before_state is not None:
                before_state()
            # Tansu answers ListOffsets(latest) with the first offset of the partition's last
            # record batch + 1, and Faust's recovery reads the changelog only up to that
            # number: records after the first of a final multi-record batch would be lost
            # on restart. So each partition's last state record goes out alone, after the
            # others are acknowledged: the last batch then holds exactly one record.
            last: dict[int, bytes] = {}
            for key, (partition, _state) in out.changed.items():
                last[partition] = key
            tail = set(last.values())
            rest = [(k, p, s) for k, (p, s) in out.changed.items() if k not in tail]
            for key, partition, state in rest:
                self.produce_state(key, partition, state)
            if rest:
                await self._flush()
            for partition, key in last.items():
                self.produce_state(key, partition, out.changed[key][1])
            await self._flush()

    async def _flush(self) -> None:
        # librdkafka's flush blocks (without the GIL): in a thread, the event loop keeps
        # serving Faust's heartbeats and rebalances meanwhile
        await asyncio.get_running_loop().run_in_executor(None, self.flush)
