"""`baton replay --from-kafka`: the workers' decisions on gov.decisions replayed as the audit's are.

Every decision a worker makes is first a record on gov.decisions, carrying its input, the
policy it names and its chain link; the sink stores them in the audit, where `baton replay`
reads them. This reads the topic instead (a deployment without the audit, or before the sink
caught up) and hands the same rows to the same replay (``replay_pool.replay_pieces``): the
same report, exits, chain check (``BATON_AUDIT_CHAIN_KEY``), scope (``ReplayScope``: the runs
with a decision in ``--since``/``--to``, each read whole; ``--run``; ``--tenant``), policies
(the workers' ``policy_in_force`` records on the topic) and ``--jobs``.

Runs are partition-local (key run id, murmur2), so the topic is read one partition at a time,
from its low watermark to the high watermark its first fetch reports (Tansu's ListOffsets
answers short by a batch's records), never following a live writer past it; the records
are folded as the audit's FINAL would hold them (``sinks.replay_records``), the partition's
runs in scope handed to the replay whole, in chain order, and freed before the next
partition is read: memory holds one partition's decisions (about 1 KB each), not the topic.
The partition holding the policy records (key ``*``) is read first: every policy is known
before any run is replayed.

A run read as trimmed (its first decision read names a link no record holds) is partial,
named, when its partition's low watermark is past 0 (retention deleted its start) and that
decision hashes to its chain hash, was not replaced under its id and is its run's first
linked decision read; otherwise broken (exit 7): nothing was trimmed there, or its start was
altered (the audit replay's ``judge_trimmed``/``altered_starts``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from baton.processors import replay_pool
from baton.processors.recorded import POLICY_RECORD_RUN, Recorded
from baton.processors.replay import ReplayReport
from baton.processors.replay_pool import as_rows, mark, run_pieces
from baton.schemas.errors import BrokerUnavailable, ReplayFailed
from baton.schemas.policy import Policy
from baton.schemas.settings import Settings
from baton.sinks.replay_records import DEAD_KEPT, PartitionRecords, StartVerdict
from baton.sinks.replay_source import ReplayScope, policies_of

__all__ = ["replay_decisions"]

#: a partition's end when its fetch reports none: read to its EOF
_TO_EOF = 2**63
#: records below which one process replays (a forked pool costs ~6 ms, pieces pickled more)
_PARALLEL_ROWS = 5_000


def replay_decisions(
    settings: Settings,
    scope: ReplayScope,
    new_policy: Policy,
    chain_key: bytes,
    jobs: int,
    retention_s: float,
    progress: Callable[[int], Any] | None = None,
) -> tuple[ReplayReport, dict[str, Policy], list[str], str]:
    """The replay of ``scope``'s runs read from gov.decisions: (report, the policies read,
    one line per record not used, what was read)."""
    from baton.streams.topics import TopicCatalog

    topic = TopicCatalog(prefix=settings.topic_prefix, partitions=settings.partitions).decisions
    label = f"{topic} at {settings.bootstrap}"
    with replay_pool.collecting_rarely():
        # forked before librdkafka starts its threads (replay_pool's module docstring)
        pool = replay_pool.start_pool(jobs - 1)
        try:
            with _Topic(settings, topic, chain_key) as read:
                mark("topic open")
                policies, refused = policies_of(read.first().policies)
                mark("policies read")
                if read.records < _PARALLEL_ROWS:
                    jobs = 1
                bar = progress(read.records) if progress is not None else None
                verdicts: StartVerdict = {}
                report = replay_pool.replay_pieces(
                    read.pieces(scope, verdicts, jobs),
                    as_rows,
                    new_policy,
                    policies,
                    chain_key,
                    jobs,
                    bar,
                    retention_s=retention_s,
                    judge=False,
                    pool=pool if jobs > 1 else None,
                )
                if bar is not None:
                    bar.done()
                broken = {
                    run_id: why
                    for run_id, why in read.broken.items()
                    if scope.run_id is None or run_id == scope.run_id
                }
                _judge(report, verdicts, broken)
                refused += read.dead
                if read.dead_count > len(read.dead):
                    unshown = read.dead_count - len(read.dead)
                    refused.append(f"{unshown:,} more records of {topic}")
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    return report, policies, refused, label


def _judge(report: ReplayReport, verdicts: StartVerdict, broken: dict[str, str]) -> None:
    """The runs read as trimmed that retention cannot have trimmed, and the runs a partition
    named broken (``PartitionRecords.broken``: whatever --since, --to or --tenant say, as a
    writer's record may have taken the run out of their scope), moved to ``report.broken``
    with why; one replayed already (its partition read before the record that broke it) is
    taken out of the runs replayed, its changes with it."""
    for run_id, (_, link) in list(report.trimmed.items()):
        why = verdicts.get((run_id, link), _UNKNOWN_START)
        if why is not None:
            del report.trimmed[run_id]
            report.partial[run_id] = why
            report.broken.append(run_id)
    for run_id, why in broken.items():
        report.partial[run_id] = why
        if run_id not in report.broken:
            report.broken.append(run_id)
    if any(run.run_id in broken for run in report.runs):
        for run in report.runs:
            if run.run_id in broken:
                report.transitions.subtract(run.transitions)
        report.transitions = +report.transitions  # (counts left at 0 dropped)
        report.runs = [run for run in report.runs if run.run_id not in broken]


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


_UNKNOWN_START = (
    "its first decision read names a link that is no start read on its partition (another "
    "run's, or one read after it): its chain was altered"
)


class _Topic:
    """gov.decisions read one partition at a time (a context manager: the consumer)."""

    def __init__(self, settings: Settings, topic: str, chain_key: bytes) -> None:
        self.settings = settings
        self.topic = topic
        self.chain_key = chain_key
        self.broken: dict[str, str] = {}
        self.dead: list[str] = []
        self.dead_count = 0
        self.records = 0

    def __enter__(self) -> _Topic:
        from confluent_kafka import KafkaException, TopicPartition

        from baton.cli.replay_kafka_read import replay_consumer, topic_partitions
        from baton.streams.kafka import kafka_said
        from baton.streams.partitioner import partition_for

        s = self.settings
        self.consumer = replay_consumer(s, "read_committed")  # as the sink reads it
        try:
            partitions = topic_partitions(self.consumer, self.topic, s)
            self.count = len(partitions)
            # every low watermark at the start (retention's cut: Tansu's is right), and the
            # records to read, about (the progress bar; each partition's end is its fetch's)
            self.lows: dict[int, int] = {}
            #: each partition's end at the start (Tansu's short by a batch): a read ending
            #: below it lost records the broker held (``partition``)
            self.highs: dict[int, int] = {}
            for p in sorted(partitions):
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=s.connect_timeout_s
                )
                self.lows[p] = max(low, 0)
                self.highs[p] = high
                self.records += max(high - self.lows[p], 0)
        except KafkaException as exc:
            self.consumer.close()
            raise BrokerUnavailable(
                f"cannot read {self.topic} from Kafka at {s.bootstrap} ({kafka_said(exc)}); is "
                "the broker running?"
            ) from None
        except BaseException:
            self.consumer.close()
            raise
        self.policy_partition = partition_for(POLICY_RECORD_RUN.encode(), self.count)
        return self

    def __exit__(self, *_: object) -> None:
        self.consumer.close()

    def partition(self, p: int) -> PartitionRecords:
        """Partition ``p``'s records, from its low watermark to its fetch's high one."""
        from confluent_kafka import KafkaError, TopicPartition

        s = self.settings
        part = PartitionRecords(
            self.topic, p, self.count, self.policy_partition, self.lows[p] > 0, self.chain_key
        )
        tp = TopicPartition(self.topic, p, self.lows[p])
        self.consumer.assign([tp])
        end: int | None = None
        stable: int | None = None  # an end of the partition read below its end: the LSO
        waited = time.monotonic() + s.connect_timeout_s
        last = self.lows[p] - 1  # the offset read last
        while True:
            msg = self.consumer.poll(s.connect_timeout_s)
            if stable is not None and (msg is None or time.monotonic() > waited):
                raise _open_transaction(self.topic, p, stable, end, s.connect_timeout_s)
            if msg is None:
                raise BrokerUnavailable(
                    f"no answer from Kafka at {s.bootstrap} within {s.connect_timeout_s:g} s "
                    f"while reading {self.topic}[{p}]"
                )
            if msg.partition() != p or msg.topic() != self.topic:
                continue  # (the partition read before: its last fetch, or its end, late)
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    raise BrokerUnavailable(f"reading {self.topic}[{p}]: {msg.error()}")
                high = self.consumer.get_watermark_offsets(tp, cached=True)[1]
                end = self._end(tp, p) if end is None else end
                # read committed, a fetch ends at the last stable offset: below the high
                # watermark, a transaction is open there (a worker's in flight, or one
                # that died in it), and every record after it, any producer's, is unread
                if msg.offset() < min(end, high):
                    if stable is None:
                        waited = time.monotonic() + s.connect_timeout_s
                    stable = msg.offset()
                    continue
                _lost(self.topic, p, msg.offset(), self.highs[p], last)
                break
            if end is None:
                end = self._end(tp, p)
            if end <= msg.offset():  # (never short of the start's end: nothing lost)
                break
            _lost(self.topic, p, msg.offset(), last + 1, last)
            last = msg.offset()
            stable = None  # (the transaction ended: its records, or the next ones, come)
            part.add(last, msg.key(), msg.value())
        self.consumer.unassign()
        self.dead += part.dead[: DEAD_KEPT - len(self.dead)]
        self.dead_count += part.dead_count
        for run_id, why in part.broken.items():
            self.broken.setdefault(run_id, why)
        return part

    def _end(self, tp: Any, p: int) -> int:
        """Where ``p``'s read ends: the end its first fetch saw (a live writer is not followed
        past it), never short of the end ListOffsets gave at the start; none known: its EOF."""
        fetched: int = self.consumer.get_watermark_offsets(tp, cached=True)[1]
        return max(fetched, self.highs[p]) if fetched >= 0 else _TO_EOF

    def first(self) -> PartitionRecords:
        """The partition of the workers' policy records, read (and kept for ``pieces``)."""
        self._first: PartitionRecords | None = self.partition(self.policy_partition)
        return self._first

    def pieces(
        self, scope: ReplayScope, verdicts: StartVerdict, jobs: int
    ) -> Iterator[list[Recorded]]:
        """Each partition's runs in scope as pieces of whole runs (the policy records' first,
        read already, then the others in turn), its runs' start verdicts added to
        ``verdicts``."""
        rows = 2_500 if jobs > 1 else 10_000
        part, self._first = self._first, None
        order = [
            self.policy_partition,
            *(q for q in sorted(self.lows) if q != self.policy_partition),
        ]
        for p in order:
            if part is None:
                part = self.partition(p)
            runs, starts = part.runs(scope)
            verdicts.update(starts)
            part = None  # freed: memory holds one partition
            mark(f"partition {p} read")
            yield from run_pieces(runs, rows)
            del runs
