"""The control follower's probes of gov.control: its partitions, then their watermarks.

A probe never blocks the reading: ``send`` asks, ``advance`` takes up what has come back and
returns at once. Step one (the topic's description) assigns the partitions to the follower's
consumer; step two (ListOffsets ``read_uncommitted``, earliest and latest) is handed to
:class:`~baton.processors.control_progress.ControlProgress` with the time the probe was sent.
Why this shape: see ``processors/control.py``.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from baton.processors.control_progress import ControlProgress

__all__ = ["ControlProbe", "ProbeInFlight"]

log = logging.getLogger("baton.processors.control")


class _Unreadable(Exception):
    """The control topic cannot be read as it is (partitions gone)."""


@dataclass
class ProbeInFlight:
    at: float  #: monotonic time before the first request left
    described: Future[Any]
    lows: dict[int, Future[Any]] | None = None
    highs: dict[int, Future[Any]] | None = None


def _reason(exc: Exception) -> str:
    """librdkafka's own words for a failure ("Broker: Unknown topic or partition")."""
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


class ControlProbe:
    """Probes of ``topic``, each answered within ``timeout_s`` or counted as failed."""

    def __init__(self, topic: str, timeout_s: float) -> None:
        self.topic = topic
        self.timeout_s = timeout_s

    def send(self, admin: AdminClient, at: float, progress: ControlProgress) -> ProbeInFlight:
        """Ask for the topic's partitions (first step of a probe; ``at`` is before it left)."""
        topics = TopicCollection([self.topic])
        described = admin.describe_topics(topics, request_timeout=self.timeout_s)
        progress.sent(at)
        return ProbeInFlight(at, described[self.topic])

    def advance(
        self,
        probe: ProbeInFlight,
        admin: AdminClient,
        consumer: Consumer,
        assigned: list[int],
        progress: ControlProgress,
    ) -> tuple[ProbeInFlight | None, list[int]]:
        """Take up what has come back (never waits): (the probe if still on its way, assignment).

        Step one answered: assign the partitions and ask for their watermarks (read_uncommitted,
        so the high one is the last stable offset). Step two answered: a probe for
        ``progress``. Any failure, including a request timeout: no contact, and a new probe.
        """
        try:
            if probe.highs is None:
                if not probe.described.done():
                    return probe, assigned
                parts = sorted(p.id for p in probe.described.result().partitions)
                if parts != assigned:
                    assigned = self._assign(consumer, parts, assigned)
                tps = [TopicPartition(self.topic, p) for p in parts]
                probe.lows = self._offsets(admin, tps, OffsetSpec.earliest())
                probe.highs = self._offsets(admin, tps, OffsetSpec.latest())
                return probe, assigned
            assert probe.lows is not None
            if not all(f.done() for f in (*probe.lows.values(), *probe.highs.values())):
                return probe, assigned
            ends = {
                p: (probe.lows[p].result().offset, high.result().offset)
                for p, high in probe.highs.items()
            }
        except (KafkaException, _Unreadable) as exc:
            step = "topic description" if probe.highs is None else "watermarks"
            progress.failed(time.monotonic(), f"{step}: {_reason(exc)}")
            return None, assigned
        progress.probed(probe.at, ends)
        return None, assigned

    def _offsets(
        self, admin: AdminClient, tps: list[TopicPartition], spec: OffsetSpec
    ) -> dict[int, Future[Any]]:
        futures = admin.list_offsets(
            {tp: spec for tp in tps},
            isolation_level=IsolationLevel.READ_UNCOMMITTED,  # as the consumer reads
            request_timeout=self.timeout_s,
        )
        return {tp.partition: f for tp, f in futures.items()}

    def _assign(self, consumer: Consumer, parts: list[int], assigned: list[int]) -> list[int]:
        gone = sorted(set(assigned) - set(parts))
        if gone:
            # never seen on Kafka (partitions only grow): the topic was deleted and made
            # again. Stay stale; giving up restarts the worker onto the new topic.
            raise _Unreadable(f"topic {self.topic}: partitions {gone} vanished")
        # partitions already followed go on from their positions, new ones from the start
        # (a partition with nothing consumed yet has no position: the start too)
        known = consumer.position([TopicPartition(self.topic, p) for p in assigned])
        start = {tp.partition: tp.offset for tp in known if tp.offset >= 0}
        consumer.assign(
            [TopicPartition(self.topic, p, start.get(p, OFFSET_BEGINNING)) for p in parts]
        )
        log.info("control topic %s: following partitions %s", self.topic, parts)
        return parts
