"""What exactly-once processing needs from Kafka beyond a transactional producer.

Two helpers, both for a worker whose consumer group is Faust's (aiokafka) while its outputs go
through a librdkafka (confluent-kafka) transactional producer:

* ``consumer_group_metadata``: ``Producer.send_offsets_to_transaction`` wants the group's
  metadata as librdkafka serializes it (``rd_kafka_consumer_group_metadata_write``), which
  only a confluent ``Consumer`` hands out. The format is small and stable (``CGMDv2:``), so
  we write it from aiokafka's generation and member id. The broker checks the generation
  (KIP-447): a worker expelled from the group cannot commit a transaction's offsets.
* ``committed_ends``: the offset after the last *committed data record* of some partitions.
  A transaction ends with a commit marker, which takes an offset but is never delivered to a
  consumer. Faust's table recovery reads a changelog until ``end offset - 1`` and would wait
  forever for a marker; it is given this offset instead. On Tansu it also corrects an end
  that ListOffsets reports short (the start of the partition's last record batch + 1), so a
  changelog may be written in multi-record batches without losing its tail on recovery.

Not guaranteed: Tansu (the embedded broker) does not check the generation, and drops the
offsets of a transaction that produced no record (every worker batch produces at least one).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

__all__ = ["PartitionHeld", "committed_ends", "consumer_group_metadata", "held_partitions"]

log = logging.getLogger(__name__)

_CGMD_MAGIC = b"CGMDv2:"


def consumer_group_metadata(
    group_id: str, generation: int, member_id: str, group_instance_id: str | None = None
) -> bytes:
    """librdkafka's serialized ``rd_kafka_consumer_group_metadata_t`` (what confluent-kafka's
    ``Consumer.consumer_group_metadata()`` returns): magic, generation as a native int32, the
    NUL-terminated group and member ids, then 1 for "no instance id" or 0 and the id."""
    out = [_CGMD_MAGIC, struct.pack("=i", generation), group_id.encode(), b"\0"]
    out += [member_id.encode(), b"\0"]
    if group_instance_id is None:
        out.append(b"\x01")
    else:
        out += [b"\x00", group_instance_id.encode(), b"\0"]
    return b"".join(out)


class PartitionHeld(TimeoutError):
    """A read_committed reader of a partition stops short of its end and stays there: a
    transaction left open holds back every record after its first one (Kafka aborts it after
    its producer's ``transaction.timeout.ms``; Tansu never does)."""

    def __init__(self, topic: str, partition: int, stable: int, high: int, held_s: float) -> None:
        self.topic, self.partition, self.stable, self.high = topic, partition, stable, high
        super().__init__(
            f"{topic}[{partition}] is held at offset {stable} by a transaction left open: "
            f"the {high - stable} offsets after it cannot be read committed (no change in "
            f"{held_s:g} s; Kafka aborts such a transaction at its producer's "
            "transaction.timeout.ms, the embedded Tansu broker never does)"
        )


def committed_ends(
    kafka_config: Mapping[str, Any],
    ends: Mapping[tuple[str, int], int],
    *,
    window: int = 1024,
    timeout_s: float = 30.0,
    total_timeout_s: float | None = None,
    hold_s: float | None = None,
) -> dict[tuple[str, int], int]:
    """For each (topic, partition) with end offset ``ends[tp]``: the offset after its last
    committed data record (0 if it has none), read with ``isolation.level=read_committed``.

    ``ends[tp]`` may be short: Tansu's ListOffsets answers the first offset of the last
    record batch + 1 (and 0 for read_committed while a transaction is open there). The
    partition is read to the end its fetches report (which is right), so records after
    ``ends[tp]`` in that last batch count too.

    Reads back from the end, ``window`` offsets at a time (doubling), so a partition costs one
    short read unless its tail is all markers and aborted records. ``timeout_s`` bounds each
    partition, ``total_timeout_s`` (None: no bound) all of them: TimeoutError past either
    (`baton doctor` waited partitions x its timeout on a cluster whose transactions hung).
    A partition whose committed records end before its high watermark and stay there for
    ``hold_s`` (None: ``timeout_s``) raises :class:`PartitionHeld`: an end read there would
    leave out every record after the open transaction (a worker restored its runs as they
    were before it, and allowed what it had stopped: session 30 H1).
    """
    whole = None if total_timeout_s is None else time.monotonic() + total_timeout_s
    out: dict[tuple[str, int], int] = {}
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": "baton-committed-ends",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        for (topic, partition), end in ends.items():
            limit = timeout_s if whole is None else min(timeout_s, whole - time.monotonic())
            if limit <= 0:
                raise TimeoutError(
                    f"the ends of {len(ends)} partitions not read in {total_timeout_s:g} s"
                )
            hold = limit if hold_s is None else min(hold_s, limit)
            tp = TopicPartition(topic, partition)
            out[(topic, partition)] = _last_data_end(consumer, tp, end, window, limit, hold)
    finally:
        consumer.close()
    return out


def _last_data_end(
    consumer: Consumer, tp: TopicPartition, end: int, window: int, timeout_s: float, hold_s: float
) -> int:
    low, _high = consumer.get_watermark_offsets(tp, timeout=min(10.0, timeout_s))
    deadline = time.monotonic() + timeout_s
    stop = max(end, low)  # an end of 0 is read from the start: it may be Tansu's held answer
    while True:
        start = max(low, stop - window)
        last = _read_to_end(consumer, tp, start, deadline, timeout_s, hold_s)
        if last >= 0:
            return last + 1
        if start <= low:
            return low  # only markers and aborted records: nothing to restore
        stop, window = start, window * 2


def _read_to_end(
    consumer: Consumer,
    tp: TopicPartition,
    start: int,
    deadline: float,
    timeout_s: float,
    hold_s: float,
) -> int:
    """The offset of the last record read committed from ``start`` to the partition's end
    (-1: none); :class:`PartitionHeld` when that end stays short of the high watermark."""
    topic, partition = tp.topic, tp.partition
    consumer.assign([TopicPartition(topic, partition, start)])
    last = -1
    held: tuple[int, int, float] | None = None  # (stable end, high watermark, since)
    while True:
        now = time.monotonic()
        if held is not None and now - held[2] >= hold_s:
            raise PartitionHeld(topic, partition, held[0], held[1], hold_s)
        if now >= deadline:
            raise TimeoutError(
                f"{topic}[{partition}]: no end of committed data found in {timeout_s:g} s "
                f"(an open transaction holds the partition?)"
            )
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        err = msg.error()
        if err is None:
            # no stop at ``end``: read to the end a fetch reports (right on Tansu, whose
            # ListOffsets answers the first offset of the last record batch + 1, so a
            # changelog whose last batch holds several records would lose all but one)
            last, held = msg.offset(), None
            continue
        if err.code() != KafkaError._PARTITION_EOF:
            raise RuntimeError(f"reading {topic}[{partition}]: {err.str()}")
        stable = msg.offset()
        _low, high = consumer.get_watermark_offsets(tp, cached=True)
        if stable >= high:
            return last
        # the fetch stopped at the last stable offset: records after it are held back
        if held is None or held[0] != stable:
            held = (stable, high, now)


def held_partitions(
    kafka_config: Mapping[str, Any],
    partitions: list[tuple[str, int]],
    *,
    hold_s: float = 3.0,
    timeout_s: float = 10.0,
) -> tuple[dict[tuple[str, int], tuple[int, int]], list[tuple[str, int]]]:
    """Which of ``partitions`` a transaction left open holds: (topic, partition) -> (the offset
    read_committed readers stop at, the high watermark), for those whose committed end stayed
    short of the high watermark for ``hold_s``; and the partitions not read to an end within
    ``timeout_s``. All are read at once, each from just before its listed end (Kafka lists the
    last stable offset there; Tansu lists 0 while a transaction is open, and its short end
    otherwise), so a partition costs one short read unless it is held on Tansu."""
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": "baton-held-partitions",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    held: dict[tuple[str, int], tuple[int, int]] = {}
    try:
        deadline = time.monotonic() + timeout_s
        starts = []
        for topic, partition in partitions:
            tp = TopicPartition(topic, partition)
            limit = max(0.1, min(5.0, deadline - time.monotonic()))
            low, listed = consumer.get_watermark_offsets(tp, timeout=limit, cached=False)
            starts.append(TopicPartition(topic, partition, max(low, listed - 1, 0)))
        consumer.assign(starts)
        pending = set(partitions)
        stuck: dict[tuple[str, int], tuple[int, int, float]] = {}
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            now = time.monotonic()
            for key, (stable, high, since) in list(stuck.items()):
                if now - since >= hold_s:
                    held[key] = (stable, high)
                    pending.discard(key)
                    del stuck[key]
            if msg is None:
                continue
            key = (msg.topic(), msg.partition())
            err = msg.error()
            if err is None:
                if stuck.pop(key, None) is not None:
                    pending.discard(key)  # its stable end moved: a transaction in flight ended
            elif err.code() != KafkaError._PARTITION_EOF:
                raise RuntimeError(f"reading {key[0]}[{key[1]}]: {err.str()}")
            elif key in pending:
                stable = msg.offset()
                _low, high = consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
                if stable >= high:
                    pending.discard(key)
                    stuck.pop(key, None)
                elif key not in stuck or stuck[key][0] != stable:
                    stuck[key] = (stable, high, now)
        return held, sorted(pending)
    finally:
        consumer.close()
