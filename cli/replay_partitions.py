"""`baton replay --from-kafka --jobs N`: each partition of gov.decisions read, folded and
replayed by one pool process; the partitions' results merged as one process would have.

Runs are partition-local (key run id, murmur2), so a partition is a whole job: a process of
the `--jobs` pool (``replay_pool.start_pool``, forked before any librdkafka client exists in
the reading process) opens its own consumer (made in the process, after the fork: a forked
librdkafka client is unusable), reads a partition (``replay_partition.read_partition``),
folds it, replays its runs in scope and sends back a :class:`PartitionDone`: its report, the
runs it named broken, its dead lines and its runs' start verdicts; then the next partition.
The reading process first reads the policy records (key ``*``) on their partition, folding
no other record there: every policy is known before a job is handed out, and the process
that takes that partition reads it to the same end (``TopicPlan.ends``), the same records
(else, the topic made again meanwhile, it fails the replay: ``check_read_again``).
Partitions go out largest first (their watermarks at the start): the last ones handed out,
while the others finish, are the small ones.

What one process would have said is kept (:func:`merged`): the results are merged in the
order it reads the partitions (the policy records' first, then by number), so the report,
the broken runs, the dead lines and their order are the same; the error it would have
stopped at is the one raised: a partition that failed (the broker silent, records lost, a
transaction open) is raised when every partition before it succeeded, else the first
failure before it. A partition neither replayed nor failed fails the replay, named: never
an answer over a partition not read. A pool process that dies (the OOM killer, kill -9) or
whose answer does not load fails the replay (``replay_pool.pool_failed``), never hangs it.

Memory: each process holds one partition's decisions at a time (about 1 KB each), and the
reading process the merged report. The progress bar counts what every process replayed:
the pool's processes add their counts to a shared array after each piece of runs.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from baton.cli.replay_kafka_read import replay_consumer
from baton.cli.replay_partition import TopicPlan, TopicTally, check_read_again, read_partition
from baton.processors.replay import ReplayReport, replay_runs, runs_of
from baton.processors.replay_pool import mark, pool_failed, run_pieces
from baton.processors.replay_steps import TOMBSTONE_RETENTION_S
from baton.schemas.errors import ReplayFailed
from baton.schemas.policy import Policy
from baton.sinks.replay_records import PartitionRecords, StartVerdict
from baton.sinks.replay_source import ReplayScope

__all__ = ["PartitionDone", "PartitionJob", "merged", "replay_partitions", "shared_counts"]

#: rows a piece of a partition's runs is replayed in (the progress is counted a piece)
_PIECE_ROWS = 2_500
#: how often the reading process redraws the progress while it waits for the pool (s)
_SHOWN_EVERY_S = 0.25


@dataclass(frozen=True, slots=True)
class PartitionJob:
    """What a pool process replays a partition under (pickled once, loaded once a process)."""

    plan: TopicPlan
    scope: ReplayScope
    new_policy: Policy
    policies: dict[str, Policy]
    retention_s: float
    tombstone_s: float = TOMBSTONE_RETENTION_S

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # the scope by its fields: ReplayScope is compiled (mypyc), and a frozen slotted
        # class's pickle does not load there (FrozenInstanceError)
        s = self.scope
        bounds = (s.since, s.until, s.run_id, s.tenant, s.active_since)
        return _job, (
            self.plan, bounds, self.new_policy, self.policies, self.retention_s, self.tombstone_s
        )  # fmt: skip


def _job(plan: TopicPlan, bounds: tuple[Any, ...], *rest: Any) -> PartitionJob:
    """A :class:`PartitionJob` from its pickled form (``PartitionJob.__reduce__``)."""
    since, until, run_id, tenant, active_since = bounds
    return PartitionJob(plan, ReplayScope(since, until, run_id, tenant, active_since), *rest)


@dataclass(slots=True)
class PartitionDone:
    """One partition replayed: its runs' report and what its read left out."""

    partition: int
    report: ReplayReport
    #: run id -> why the partition names it broken (``PartitionRecords.broken``)
    broken: dict[str, str]
    #: its dead lines (the first DEAD_KEPT) and how many records were not used
    dead: list[str]
    dead_count: int
    #: its runs' start verdicts (``PartitionRecords.runs``)
    verdicts: StartVerdict


#: [runs, decisions] the pool's processes replayed, shared with the reading process: made
#: before the pool forks (``shared_counts``), inherited by its processes
_counts: Any = None
#: in a pool process: (the pickled job, the job, this process's consumer, made at its first
#: partition: after the fork)
_held: list[Any] = []


def shared_counts() -> None:
    """The progress counts a forked pool's processes add to: call before the pool forks.
    Where no shared lock can be made (no /dev/shm), none: the bar then waits, the replay not."""
    global _counts
    try:
        _counts = multiprocessing.get_context("fork").Array("q", 2)
    except OSError:
        _counts = None


def replay_part(
    part: PartitionRecords, job: PartitionJob, counted: Callable[[int, int], None]
) -> PartitionDone:
    """``part``'s runs in scope replayed, a piece of runs at a time (``counted(runs,
    decisions)`` after each), as the serial replay replays them."""
    runs, starts = part.runs(job.scope)
    report = ReplayReport()
    for piece in run_pieces(runs, _PIECE_ROWS):
        done = replay_runs(
            runs_of(piece),
            job.new_policy,
            job.policies,
            job.plan.chain_key,
            retention_s=job.retention_s,
            judge=False,
            tombstone_s=job.tombstone_s,
        )
        report.merge(done)
        counted(len(done.runs) + len(done.partial), done.decisions)
    return PartitionDone(part.partition, report, part.broken, part.dead, part.dead_count, starts)


def _replay_partition(job: bytes, p: int) -> PartitionDone:
    """A pool process's task: partition ``p`` read with this process's consumer, replayed."""
    mark(f"partition {p}")
    if not _held or _held[0] != job:
        _held[:] = [job, pickle.loads(job), None]
    work: PartitionJob = _held[1]
    if _held[2] is None:
        _held[2] = replay_consumer(work.plan.settings, "read_committed")
    part = read_partition(_held[2], work.plan, p)[0]
    check_read_again(work.plan, part)
    mark(f"partition {p} read")
    done = replay_part(part, work, _count)
    mark(f"partition {p} done")
    return done


#: counts not added to the shared array yet (its lock was busy)
_unsent = [0, 0]


def _count(runs: int, decisions: int) -> None:
    """Add to the shared progress counts; never waits long for their lock: a process killed
    holding it (kill -9) must not stop the others, and a count missed is only a bar."""
    _unsent[0] += runs
    _unsent[1] += decisions
    if _counts is not None and _counts.get_lock().acquire(timeout=0.05):
        try:
            counts = _counts.get_obj()
            counts[0] += _unsent[0]
            counts[1] += _unsent[1]
            _unsent[:] = [0, 0]
        finally:
            _counts.get_lock().release()


def replay_partitions(
    job: PartitionJob,
    pool: ProcessPoolExecutor,
    tally: TopicTally,
    verdicts: StartVerdict,
    progress: Callable[[int, int], None] | None,
) -> ReplayReport:
    """Every partition of ``job.plan`` replayed in ``pool``, merged in the serial order into
    the report, ``tally`` and ``verdicts`` (see the module docstring)."""
    plan = job.plan
    order = plan.order()
    rank = {p: i for i, p in enumerate(order)}
    pickled = pickle.dumps(job)
    if _counts is not None:
        _counts.get_obj()[:] = [0, 0]

    def shown() -> None:
        if progress is not None and _counts is not None:
            runs, decisions = _counts.get_obj()  # (without its lock: a bar)
            progress(runs, decisions)

    # largest first: the partitions handed out last, while the others finish, are small
    largest = sorted(order, key=lambda q: (plan.lows[q] - plan.highs[q], q))
    # each future hands itself over once done: a wait() over every future not done, once a
    # partition, cost the reading process O(partitions) each (30,000 partitions: 69 s of its
    # CPU, 2 minutes, where one process read them all in 0.8 s)
    finished: queue.SimpleQueue[Future[PartitionDone]] = queue.SimpleQueue()
    futures: dict[Future[PartitionDone], int] = {}
    of: dict[int, Future[PartitionDone]] = {}
    for q in largest:
        future = of[q] = pool.submit(_replay_partition, pickled, q)
        futures[future] = q
    results: dict[int, PartitionDone | BaseException] = {}
    try:
        failed = len(order)  # the rank of the first partition that failed so far
        missing = len(order)  # the partitions ranked before it without a result
        for future in futures:
            future.add_done_callback(finished.put)
        while missing:
            try:
                future = finished.get(timeout=_SHOWN_EVERY_S)
            except queue.Empty:
                shown()
                continue
            q = futures[future]
            if rank[q] >= failed:
                continue  # (not needed: after the first failure)
            if future.cancelled():  # (no result: ``merged`` fails the replay, named)
                missing -= 1
                continue
            exc = future.exception()
            if isinstance(exc, BrokenProcessPool):
                raise pool_failed(exc) from None
            results[q] = exc if exc is not None else future.result()
            missing -= 1
            if exc is not None:
                # one process stops at the first failure: the partitions after it are not
                # needed (those running are ended with the pool; those queued are dropped)
                for later in order[rank[q] + 1 : failed]:
                    if later not in results:
                        of[later].cancel()
                        missing -= 1
                failed = rank[q]
            if finished.empty():
                shown()
    finally:
        for future in futures:
            future.cancel()
    mark("partitions replayed")
    return merged(plan.topic, order, results, tally, verdicts)


def merged(
    topic: str,
    order: list[int],
    results: dict[int, PartitionDone | BaseException],
    tally: TopicTally,
    verdicts: StartVerdict,
) -> ReplayReport:
    """``topic``'s partitions' ``results`` merged in ``order`` (one process's), into the report,
    ``tally`` and ``verdicts``; the first failure in that order raised, and a partition with
    no result a failure (nothing is answered over a partition not read)."""
    report = ReplayReport()
    for p in order:
        result = results.get(p)
        if isinstance(result, BaseException):
            raise result
        if result is None:
            raise ReplayFailed(
                f"{topic}[{p}] was neither replayed nor failed (a `--jobs` "
                "process gave no answer for it): what its runs change is unknown; replay "
                "again, with --jobs 1"
            )
        report.merge(result.report)
        tally.add(result.broken, result.dead, result.dead_count)
        verdicts.update(result.verdicts)
    return report
