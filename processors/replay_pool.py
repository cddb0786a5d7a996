"""`baton replay` on several cores: runs are independent, so pieces of whole runs go to processes.

The reading process replays *pieces* (whole runs each, in whatever form the reader made them:
the audit's page bytes, or rows) itself and hands them to a pool of ``jobs - 1`` processes
while the pool has room (two pieces in flight per process), so every one of the ``jobs``
processes decides and none waits; a pool process decodes its piece (``decode``, a
module-level function) and replays it with ``replay.replay_runs``. Reports are merged in the
order the pieces were read, so the result equals a replay in one process.

What the hand-off costs is kept small: a piece travels as the bytes it was read as (no
pickled rows), the policies travel once per process (the pool's initializer), and at most
``2 * (jobs - 1)`` pieces are in the pool (memory stays bounded however long the replay). The pool
starts in a thread while the reading process replays the first pieces itself (a process
pool takes about half a second to start: it must not stand between the audit and the
first decisions). Reading runs in a thread too (``prefetched``): the audit's query for the
next page overlaps the replay of this one (chDB and clickhouse-connect release the GIL).

A pool process that dies (the OOM killer, a crash) fails the replay (``ReplayFailed``,
exit 7) rather than leaving it waiting for the lost piece: the pool is a
``ProcessPoolExecutor``, which says so, not a ``multiprocessing.Pool``, which does not.

The pool uses the ``forkserver`` start method: the reading process holds a ClickHouse client
(chDB's engine runs threads), and forking a process with threads is unsafe.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from baton.processors.recorded import Recorded
from baton.processors.replay import ReplayReport, replay_runs, runs_of
from baton.processors.replay_steps import RUN_RETENTION_S
from baton.processors.replay_trimmed import judge_trimmed
from baton.schemas.errors import ReplayFailed
from baton.schemas.policy import Policy

__all__ = ["prefetched", "replay_parallel", "replay_pieces"]

_T = TypeVar("_T")
#: what a pool process replays under, set once by _start
_job: tuple[Policy, dict[str, Policy], bytes, Callable[[Any], Iterable[Sequence[object]]], float]


def _start(
    new_policy: Policy,
    policies: dict[str, Policy],
    chain_key: bytes,
    decode: Callable[[Any], Iterable[Sequence[object]]],
    retention_s: float = RUN_RETENTION_S,
) -> None:
    global _job
    _job = (new_policy, policies, chain_key, decode, retention_s)


def _replay_piece(piece: Any) -> ReplayReport:
    new_policy, policies, chain_key, decode, retention_s = _job
    return replay_runs(
        runs_of(decode(piece)),
        new_policy,
        policies,
        chain_key,
        retention_s=retention_s,
        judge=False,
    )


def _as_rows(piece: list[Sequence[object]]) -> list[Sequence[object]]:
    return piece


def replay_pieces(
    pieces: Iterable[_T],
    decode: Callable[[_T], Iterable[Sequence[object]]],
    new_policy: Policy,
    policies: dict[str, Policy],
    chain_key: bytes = b"",
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
    wait: bool = False,
    retention_s: float = RUN_RETENTION_S,
    judge: bool = True,
) -> ReplayReport:
    """``replay_runs`` over ``pieces`` (each whole runs in order, rows from ``decode(piece)``,
    a module-level function) in ``jobs`` processes: this one and a pool of ``jobs - 1``
    (1: this one only); ``wait``: the pool started before any piece is replayed. The runs
    read as trimmed are judged over all pieces (``replay_trimmed``; ``judge`` False: by the
    caller, for a read with a lower time bound)."""
    report = _replay_pieces(
        pieces, decode, new_policy, policies, chain_key, jobs, progress, wait, retention_s
    )
    if judge:
        judge_trimmed(report)
    return report


def _replay_pieces(
    pieces: Iterable[_T],
    decode: Callable[[_T], Iterable[Sequence[object]]],
    new_policy: Policy,
    policies: dict[str, Policy],
    chain_key: bytes,
    jobs: int,
    progress: Callable[[int, int], None] | None,
    wait: bool,
    retention_s: float,
) -> ReplayReport:
    """``replay_pieces``' replay, the runs read as trimmed not judged."""
    report = ReplayReport()
    decided = 0
    job = (new_policy, policies, chain_key)

    def here(piece: _T) -> ReplayReport:
        return replay_runs(runs_of(decode(piece)), *job, retention_s=retention_s, judge=False)

    def merge(part: ReplayReport) -> None:
        nonlocal decided
        report.merge(part)
        decided += part.decisions
        if progress is not None:
            progress(len(report.runs) + len(report.partial), decided)

    if jobs <= 1:
        for piece in pieces:
            merge(here(piece))
        return report
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["baton.processors.replay_pool", decode.__module__])
    started: list[ProcessPoolExecutor] = []

    def start() -> None:
        pool = ProcessPoolExecutor(jobs - 1, ctx, _start, (*job, decode, retention_s))
        with contextlib.suppress(BrokenProcessPool):  # (seen at the first piece's result)
            pool.submit(int).result()  # its processes started and initialised
        started.append(pool)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    if wait:
        starter.join()
    #: every piece's report in read order: done (replayed here) or still in the pool
    waiting: deque[ReplayReport | Future[ReplayReport]] = deque()
    in_pool = 0  # pieces handed to the pool and not merged yet
    #: pieces in flight per pool process: one replayed, one queued behind it
    most = 2 * (jobs - 1)

    def merge_ready(block: bool) -> None:
        nonlocal in_pool
        while waiting:
            first = waiting[0]
            if type(first) is ReplayReport:
                merge(waiting.popleft())  # type: ignore[arg-type]
            elif block or first.done():  # type: ignore[union-attr]
                merge(waiting.popleft().result())  # type: ignore[union-attr]
                in_pool -= 1
            else:
                return

    try:
        for piece in pieces:
            # the pool takes a piece while it has room, and this process replays the rest:
            # every process decides, none waits for another (pieces are whole runs, small)
            if started and in_pool < most:
                waiting.append(started[0].submit(_replay_piece, piece))
                in_pool += 1
            else:
                waiting.append(here(piece))
            merge_ready(block=False)
        merge_ready(block=True)
    except BrokenProcessPool:
        # a pool process died (the OOM killer, a crash): its piece is lost, so the replay
        # fails; a multiprocessing.Pool lost the piece and waited for it for ever
        raise ReplayFailed(
            "a `--jobs` replay process ended before its piece was replayed (killed: out of "
            "memory?); replay again, with fewer --jobs or --jobs 1"
        ) from None
    finally:
        starter.join()
        for pool in started:
            pool.shutdown(wait=True, cancel_futures=True)
    return report


def _pieces(runs: Iterable[list[Recorded]], rows: int) -> Iterator[list[Recorded]]:
    piece: list[Recorded] = []
    for run in runs:
        piece += run
        if len(piece) >= rows:
            yield piece
            piece = []
    if piece:
        yield piece


def replay_parallel(
    rows: Iterable[Sequence[object]],
    new_policy: Policy,
    policies: dict[str, Policy],
    chain_key: bytes = b"",
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
    *,
    piece_rows: int = 5_000,
    wait: bool = False,
) -> ReplayReport:
    """``replay_runs`` over ``rows`` (REPLAY_COLUMNS order, run by run) with ``jobs``
    processes, pieces of about ``piece_rows`` rows; rows are pickled to them (a reader of
    the audit hands bytes: replay_pieces)."""
    pieces = _pieces(runs_of(rows), piece_rows)
    return replay_pieces(pieces, _as_rows, new_policy, policies, chain_key, jobs, progress, wait)


def prefetched(items: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """``items``, produced by a thread up to ``depth`` ahead (reading overlaps replaying);
    an exception in the thread is raised here, where the item would have come."""
    ahead: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                ahead.put((True, item))
            ahead.put((False, None))
        except BaseException as exc:  # handed to the consumer, raised there
            ahead.put((False, exc))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            more, item = ahead.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                ahead.get(timeout=0.1)
