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

__all__ = ["committed_ends", "consumer_group_metadata"]

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


def committed_ends(
    kafka_config: Mapping[str, Any],
    ends: Mapping[tuple[str, int], int],
    *,
    window: int = 1024,
    timeout_s: float = 30.0,
    total_timeout_s: float | None = None,
) -> dict[tuple[str, int], int]:
    """For each (topic, partition) with end offset ``ends[tp]``: the offset after its last
    committed data record (0 if it has none), read with ``isolation.level=read_committed``.

    ``ends[tp]`` may be short: Tansu's ListOffsets answers the first offset of the last
    record batch + 1. The partition is read to the end its fetches report (which is right),
    so records after ``ends[tp]`` in that last batch count too.

    Reads back from the end, ``window`` offsets at a time (doubling), so a partition costs one
    short read unless its tail is all markers and aborted records. ``timeout_s`` bounds each
    partition, ``total_timeout_s`` (None: no bound) all of them: TimeoutError past either
    (`baton doctor` waited partitions x its timeout on a cluster whose transactions hung).
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
            out[(topic, partition)] = _last_data_end(consumer, topic, partition, end, window, limit)
    finally:
        consumer.close()
    return out


def _last_data_end(
    consumer: Consumer, topic: str, partition: int, end: int, window: int, timeout_s: float
) -> int:
    if end <= 0:
        return end
    low, _high = consumer.get_watermark_offsets(
        TopicPartition(topic, partition), timeout=min(10.0, timeout_s)
    )
    deadline = time.monotonic() + timeout_s
    stop = end
    while True:
        start = max(low, stop - window)
        consumer.assign([TopicPartition(topic, partition, start)])
        last = -1
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    break
                raise RuntimeError(f"reading {topic}[{partition}]: {err.str()}")
            # no stop at ``end``: read to the end a fetch reports (right on Tansu, whose
            # ListOffsets answers the first offset of the last record batch + 1, so a
            # changelog whose last batch holds several records would lose all but one)
            last = msg.offset()
        else:
            raise TimeoutError(
                f"{topic}[{partition}]: no end of committed data found in {timeout_s:g} s "
                f"(an open transaction holds the partition?)"
            )
        if last >= 0:
            return last + 1
        if start <= low:
            return low  # only markers and aborted records: nothing to restore
        stop, window = start, window * 2
