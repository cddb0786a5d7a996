"""Where the audit sink's partitions end: the lag it reports, and whether a draining stop has
read them to their end.

A draining stop (``baton sink --drain-s``, what ``baton up`` runs: its embedded broker forgets
every decision when it stops) keeps reading until every assigned partition is read to the end
its fetches report, so the decisions the workers published before they stopped are stored
before the broker goes (session 35: a `baton up` stop at 3,000 decisions/s left 294-425
decisions clients had received out of the audit; a restart then restored their runs with less
spend and fewer handoffs). The end is the *cached* watermark, the one fetch responses carry:
Tansu answers ListOffsets with the start of a partition's last record batch + 1, short of its
end (docs/architecture.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["END_SETTLE_S", "DrainEnd", "partition_lag", "read_to_end"]

#: how long the end must hold before a draining sink stops: longer than a fetch waits, so a
#: fetch sent after the last record was written has answered (a watermark cached from an
#: earlier answer reads that record's end short: H2, session 35)
END_SETTLE_S = 1.0

log = logging.getLogger("baton.sinks.sink")


def partition_lag(consumer: Any, topic: str, partition: int, next_offset: int, last: int) -> int:
    """Records of ``topic``'s ``partition`` past ``next_offset`` by the end its fetches last
    reported (``last``, the previous figure, when there is none to read)."""
    from confluent_kafka import TopicPartition

    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
    except Exception:  # lag is a report, never a reason to stop
        return last
    return max(0, int(high) - next_offset) if high >= 0 else 0


def read_to_end(
    consumer: Any, topic: str, drain: threading.Event | None, drained: bool, quiet: bool = False
) -> bool:
    """Told to drain (``drain`` set) and the last consume returned nothing (``drained``):
    True once every assigned partition of ``topic`` is read to the end its fetches report
    (one that answered no fetch yet is not). The loop's clean stop then stores and commits the
    rest."""
    if drain is None or not drain.is_set() or not drained:
        return False
    from confluent_kafka import TopicPartition

    assignment = [tp for tp in consumer.assignment() if tp.topic == topic]
    if not assignment:
        return False  # not (re)assigned yet: nothing can be said of the end
    positions = consumer.position(assignment)
    unread = [tp for tp in positions if tp.offset < 0]  # nothing consumed since assigned
    committed = {tp.partition: tp.offset for tp in consumer.committed(unread, timeout=5)}
    for tp in positions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), cached=True)
        if high < 0:
            return False  # no fetch answered yet
        at = tp.offset if tp.offset >= 0 else committed.get(tp.partition, -1)
        if (at if at >= 0 else low) < high:
            return False
    log.info(
        "audit sink: %s read to its end (%d partitions) before stopping", topic, len(positions)
    )
    return True


class DrainEnd:
    """:func:`read_to_end` held for :data:`END_SETTLE_S` on end: the loop's condition."""

    def __init__(
        self,
        topic: str,
        drain: threading.Event,
        settle_s: float = END_SETTLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic, self.drain, self.settle_s, self.clock = topic, drain, settle_s, clock
        self._since: float | None = None

    def reached(self, consumer: Any, drained: bool) -> bool:
        if not read_to_end(consumer, self.topic, self.drain, drained, quiet=True):
            self._since = None
            return False
        now = self.clock()
        if self._since is None:
            self._since = now
        if now - self._since < self.settle_s:
            return False
        log.info("audit sink: %s read to its end before stopping", self.topic)
        return True
