"""One partition of gov.decisions read for `baton replay --from-kafka`: to its end, folded.

A partition is read from its low watermark at the replay's start to the high watermark its
first fetch reports (Tansu's ListOffsets answers short by a batch's records), never
following a live writer past it, and folded as the audit's FINAL would hold it
(``sinks.replay_records.PartitionRecords``). Where the read cannot be whole it raises, named:
the broker silent (``BrokerUnavailable``), records it held gone, or a transaction open past
the connect timeout (``ReplayFailed``). :class:`TopicPlan` is what a read needs, and pickles:
a `--jobs` process reads its partitions with its own consumer (``cli.replay_partitions``).
(confluent_kafka is imported here, before `baton replay` forks its pool, so that no pool
process imports it again; importing it starts no librdkafka thread, a client does.)
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from baton.schemas.errors import BrokerUnavailable, ReplayFailed
from baton.schemas.settings import Settings
from baton.sinks.replay_records import DEAD_KEPT, PartitionRecords

__all__ = ["TopicPlan", "TopicTally", "check_read_again", "policy_digest", "read_partition"]

#: a partition's end when its fetch reports none: read to its EOF
_TO_EOF = 2**63


@dataclass(frozen=True, slots=True)
class TopicPlan:
    """gov.decisions as the replay found it at its start: what reading a partition needs."""

    settings: Settings
    topic: str
    #: the topic's partitions (a run's partition: murmur2 of its id)
    count: int
    #: the partition of the workers' policy_in_force records (key ``*``)
    policy_partition: int
    #: each partition's low watermark at the start (retention's cut: Tansu's is right)
    lows: dict[int, int]
    #: each partition's end at the start (Tansu's short by a batch): a read ending below it
    #: lost records the broker held
    highs: dict[int, int]
    chain_key: bytes
    #: partition -> where its read ends, fixed (the policy records' partition as the reading
    #: process read it: every process reads the same records there); else ``_end``'s
    ends: dict[int, int] = field(default_factory=dict)
    #: the policy records as the reading process read them (``policy_digest``), which a
    #: process reading their partition again must read too (b"": no such read)
    policy_digest: bytes = b""
    #: the workers' audit MAC keys: a record without their MAC is not used (the sink's rule)
    mac_keys: tuple[bytes, ...] = ()

    def order(self) -> list[int]:
        """The partitions in the order one process reads them: the policy records' first."""
        rest = (q for q in sorted(self.lows) if q != self.policy_partition)
        return [self.policy_partition, *rest]


@dataclass(slots=True)
class TopicTally:
    """What the partitions read so far left out, in the order they were read: the runs they
    named broken (the first reason a run was given) and the records not used."""

    broken: dict[str, str] = field(default_factory=dict)
    #: one line per record not used, the first DEAD_KEPT of them
    dead: list[str] = field(default_factory=list)
    dead_count: int = 0

    def add(self, broken: dict[str, str], dead: list[str], dead_count: int) -> None:
        """A partition's, read after the ones added before."""
        self.dead += dead[: DEAD_KEPT - len(self.dead)]
        self.dead_count += dead_count
        for run_id, why in broken.items():
            self.broken.setdefault(run_id, why)


def read_partition(
    consumer: Any, plan: TopicPlan, p: int, only: bytes | None = None
) -> tuple[PartitionRecords, int]:
    """Partition ``p``'s records, from its low watermark to its fetch's high one, read with
    ``consumer`` (``replay_kafka_read.replay_consumer``, read_committed), folded, and the
    offset the read ended at; ``only``: the records under that key only folded (the
    ``policy_in_force`` records are under ``*``: a read for the policies, its checks all)."""
    s, topic = plan.settings, plan.topic
    low = plan.lows[p]
    part = PartitionRecords(
        topic, p, plan.count, plan.policy_partition, low > 0, plan.chain_key, plan.mac_keys
    )
    tp = TopicPartition(topic, p, low)
    consumer.assign([tp])
    end: int | None = None
    stable: int | None = None  # an end of the partition read below its end: the LSO
    waited = time.monotonic() + s.connect_timeout_s
    last = low - 1  # the offset read last
    while True:
        msg = consumer.poll(s.connect_timeout_s)
        if stable is not None and (msg is None or time.monotonic() > waited):
            raise _open_transaction(topic, p, stable, end, s.connect_timeout_s)
        if msg is None:
            raise BrokerUnavailable(
                f"no answer from Kafka at {s.bootstrap} within {s.connect_timeout_s:g} s "
                f"while reading {topic}[{p}]"
            )
        if msg.partition() != p or msg.topic() != topic:
            continue  # (the partition read before: its last fetch, or its end, late)
        if msg.error() is not None:
            if msg.error().code() != KafkaError._PARTITION_EOF:
                raise BrokerUnavailable(f"reading {topic}[{p}]: {msg.error()}")
            high = consumer.get_watermark_offsets(tp, cached=True)[1]
            end = _end(consumer, plan, tp, p) if end is None else end
            # read committed, a fetch ends at the last stable offset: below the high
            # watermark, a transaction is open there (a worker's in flight, or one
            # that died in it), and every record after it, any producer's, is unread
            if msg.offset() < min(end, high):
                if stable is None:
                    waited = time.monotonic() + s.connect_timeout_s
                stable = msg.offset()
                continue
            _lost(topic, p, msg.offset(), plan.highs[p], last)
            end = msg.offset()
            break
        if end is None:
            end = _end(consumer, plan, tp, p)
        if end <= msg.offset():  # (never short of the start's end: nothing lost)
            break
        _lost(topic, p, msg.offset(), last + 1, last)
        last = msg.offset()
        stable = None  # (the transaction ended: its records, or the next ones, come)
        if only is None or msg.key() == only:
            part.add(last, msg.key(), msg.value())
    consumer.unassign()
    return part, end


def policy_digest(policies: list[tuple[str, str]]) -> bytes:
    """A digest of the (version, document) policy records read on their partition."""
    digest = hashlib.sha256()
    for version, document in policies:
        for text in (version, document):
            data = text.encode()
            digest.update(len(data).to_bytes(8, "big") + data)
    return digest.digest()


def check_read_again(plan: TopicPlan, part: PartitionRecords) -> None:
    """Raise unless ``part``, the policy records' partition read again to the end the
    reading process read it to (``TopicPlan.ends``), holds the policy records it read: the
    topic made again in between (a broker restarted without its records and written again)
    would have its runs replayed under policy records it no longer holds."""
    if not plan.policy_digest or part.partition != plan.policy_partition:
        return
    if policy_digest(part.policies) != plan.policy_digest:
        raise ReplayFailed(
            f"{plan.topic}[{part.partition}], the policy records' partition, read again to "
            f"offset {plan.ends.get(part.partition)} by a `--jobs` process, holds other policy "
            "records than when the replay read its policies there: the topic was made again "
            "or written over meanwhile (a broker restarted without its records?), or retention "
            "deleted its first records; what its runs change is unknown; replay again"
        )


def _end(consumer: Any, plan: TopicPlan, tp: Any, p: int) -> int:
    """Where ``p``'s read ends: the end its first fetch saw (a live writer is not followed
    past it), never short of the end ListOffsets gave at the start; none known: its EOF."""
    if p in plan.ends:
        return plan.ends[p]
    fetched: int = consumer.get_watermark_offsets(tp, cached=True)[1]
    return max(fetched, plan.highs[p]) if fetched >= 0 else _TO_EOF


def _lost(topic: str, p: int, at: int, least: int, last: int) -> None:
    """Raise unless ``topic[p]``'s read, at offset ``at``, is at ``least`` or past it (the end
    the partition had when the replay began, or past the offset read last)."""
    if at >= least:
        return
    where = (
        f"went back to offset {at} after {last}"
        if at <= last
        else f"ends at offset {at}, below {least}, its end when the replay began"
    )
    raise ReplayFailed(
        f"{topic}[{p}] {where}: records the broker held are gone (a broker restarted "
        "without them, the topic made again, an unclean leader election); what they "
        "change is unknown"
    )


def _open_transaction(
    topic: str, p: int, stable: int, end: int | None, waited: float
) -> ReplayFailed:
    return ReplayFailed(
        f"{topic}[{p}] could be read to offset {stable} only, not to its end ({end}): a "
        f"transaction open there for over {waited:g} s (a worker that died in one: Kafka "
        "aborts it after transaction.timeout.ms; or another producer's) hides the records "
        "after it, and what they change is unknown; run the replay again later"
    )
