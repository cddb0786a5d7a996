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
before any run is replayed. With ``--jobs N`` (a forked pool, enough records) each partition
is read, folded and replayed whole by one pool process instead, merged as this order reads
them (``cli.replay_partitions``): the same report, lines on stderr, errors and exits.

A run read as trimmed (its first decision read names a link no record holds) is partial,
named, when its partition's low watermark is past 0 (retention deleted its start) and that
decision hashes to its chain hash, was not replaced under its id and is its run's first
linked decision read; otherwise broken (exit 7): nothing was trimmed there, or its start was
altered (the audit replay's ``judge_trimmed``/``altered_starts``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from baton.cli import replay_partitions
from baton.cli.replay_partition import (
    TopicPlan,
    TopicTally,
    policy_digest,
    read_partition,
)
from baton.cli.replay_partitions import PartitionJob
from baton.processors import replay_pool
from baton.processors.recorded import POLICY_RECORD_RUN, Recorded
from baton.processors.replay import ReplayReport
from baton.processors.replay_pool import as_rows, mark, run_pieces
from baton.processors.replay_steps import TOMBSTONE_RETENTION_S
from baton.schemas.errors import BrokerUnavailable
from baton.schemas.policy import Policy
from baton.schemas.settings import Settings
from baton.sinks.replay_records import PartitionRecords, StartVerdict
from baton.sinks.replay_source import ReplayScope, policies_of

__all__ = ["replay_decisions"]

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
    tombstone_s: float = TOMBSTONE_RETENTION_S,
    mac_keys: tuple[bytes, ...] = (),
) -> tuple[ReplayReport, dict[str, Policy], list[str], str]:
    """The replay of ``scope``'s runs read from gov.decisions: (report, the policies read,
    one line per record not used, what was read); ``retention_s``, ``tombstone_s``: the
    workers' run and tombstone retention; ``mac_keys``: the workers' audit MAC keys (a
    record without such a MAC is not used: the sink rejects it, ``forged``)."""
    from baton.streams.topics import TopicCatalog

    topic = TopicCatalog(prefix=settings.topic_prefix, partitions=settings.partitions).decisions
    label = f"{topic} at {settings.bootstrap}"
    with replay_pool.collecting_rarely():
        # forked before librdkafka starts its threads (replay_pool's module docstring): with
        # --jobs N, N processes read, fold and replay partitions (this one reads the policy
        # records first: replay_partitions), never more than there are partitions
        if jobs > 1:
            replay_partitions.shared_counts()
        processes = min(jobs, settings.partitions) if settings.partitions > 1 else jobs - 1
        with (
            replay_pool.owned_pool(processes if jobs > 1 else 0) as pool,
            _Topic(settings, topic, chain_key, mac_keys) as read,
        ):
            mark("topic open")
            if read.records < _PARALLEL_ROWS:
                jobs = 1
            # a caller running threads has no forked pool: this process reads, a
            # forkserver pool decides (replay_pieces)
            parallel = jobs > 1 and pool is not None and read.plan.count > 1
            plan = read.policies_read() if parallel else read.first()
            policies, refused = policies_of(read.policies)
            mark("policies read")
            bar = progress(read.records) if progress is not None else None
            verdicts: StartVerdict = {}
            if parallel:
                assert pool is not None
                job = PartitionJob(plan, scope, new_policy, policies, retention_s, tombstone_s)
                report = replay_partitions.replay_partitions(job, pool, read.tally, verdicts, bar)
            else:
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
                    tombstone_s=tombstone_s,
                )
            if bar is not None:
                bar.done()
            tally = read.tally
            broken = {
                run_id: why
                for run_id, why in tally.broken.items()
                if scope.run_id is None or run_id == scope.run_id
            }
            _judge(report, verdicts, broken)
            refused += tally.dead
            if tally.dead_count > len(tally.dead):
                unshown = tally.dead_count - len(tally.dead)
                refused.append(f"{unshown:,} more records of {topic}")
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


_UNKNOWN_START = (
    "its first decision read names a link that is no start read on its partition (another "
    "run's, or one read after it): its chain was altered"
)


class _Topic:
    """gov.decisions read one partition at a time (a context manager: the consumer)."""

    def __init__(
        self, settings: Settings, topic: str, chain_key: bytes, mac_keys: tuple[bytes, ...] = ()
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.chain_key = chain_key
        self.mac_keys = mac_keys
        #: the broken runs and dead lines of the partitions read (in the order read)
        self.tally = TopicTally()
        #: the records to read, about (the progress bar; each partition's end is its fetch's)
        self.records = 0
        #: (version, document) of the workers' policy records read
        self.policies: list[tuple[str, str]] = []

    def __enter__(self) -> _Topic:
        from confluent_kafka import KafkaException, TopicPartition

        from baton.cli.replay_kafka_read import replay_consumer, topic_partitions
        from baton.streams.kafka import kafka_said
        from baton.streams.partitioner import partition_for

        s = self.settings
        self.consumer = replay_consumer(s, "read_committed")  # as the sink reads it
        try:
            partitions = topic_partitions(self.consumer, self.topic, s)
            lows: dict[int, int] = {}
            highs: dict[int, int] = {}
            for p in sorted(partitions):
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=s.connect_timeout_s
                )
                lows[p] = max(low, 0)
                highs[p] = high
                self.records += max(high - lows[p], 0)
        except KafkaException as exc:
            self.consumer.close()
            raise BrokerUnavailable(
                f"cannot read {self.topic} from Kafka at {s.bootstrap} ({kafka_said(exc)}); is "
                "the broker running?"
            ) from None
        except BaseException:
            self.consumer.close()
            raise
        count = len(partitions)
        policy_partition = partition_for(POLICY_RECORD_RUN.encode(), count)
        self.plan = TopicPlan(
            s, self.topic, count, policy_partition, lows, highs, self.chain_key,
            mac_keys=self.mac_keys,
        )  # fmt: skip
        return self

    def __exit__(self, *_: object) -> None:
        self.consumer.close()

    def partition(self, p: int) -> PartitionRecords:
        """Partition ``p``'s records (``replay_partition.read_partition``), its broken runs
        and dead lines added to ``tally``."""
        part = read_partition(self.consumer, self.plan, p)[0]
        self.tally.add(part.broken, part.dead, part.dead_count)
        return part

    def first(self) -> TopicPlan:
        """The partition of the workers' policy records read (kept for ``pieces``), their
        (version, document) in ``policies``; the plan."""
        self._first: PartitionRecords | None = self.partition(self.plan.policy_partition)
        self.policies = self._first.policies
        return self.plan

    def policies_read(self) -> TopicPlan:
        """The workers' policy records read (``policies``), their partition's other records
        not folded (a `--jobs` process folds it, to the end read here: the plan's)."""
        pp = self.plan.policy_partition
        part, end = read_partition(self.consumer, self.plan, pp, only=POLICY_RECORD_RUN.encode())
        self.policies = part.policies
        return replace(self.plan, ends={pp: end}, policy_digest=policy_digest(part.policies))

    def pieces(
        self, scope: ReplayScope, verdicts: StartVerdict, jobs: int
    ) -> Iterator[list[Recorded]]:
        """Each partition's runs in scope as pieces of whole runs (the policy records' first,
        read already, then the others in turn), its runs' start verdicts added to
        ``verdicts``."""
        rows = 2_500 if jobs > 1 else 10_000
        part, self._first = self._first, None
        for p in self.plan.order():
            if part is None:
                part = self.partition(p)
            runs, starts = part.runs(scope)
            verdicts.update(starts)
            part = None  # freed: memory holds one partition
            mark(f"partition {p} read")
            yield from run_pieces(runs, rows)
            del runs
