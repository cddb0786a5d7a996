"""`baton replay` on several cores: runs are independent, so pieces of whole runs go to processes.

The reading process replays *pieces* (whole runs each, in whatever form the reader made them:
the audit's page bytes, or rows) itself and hands them to a pool of ``jobs - 1`` processes
while the pool has room (two pieces in flight per process), so every one of the ``jobs``
processes decides and none waits; a pool process decodes its piece (``decode``, a
module-level function) and replays it with ``replay.replay_runs``. Reports are merged in the
order the pieces were read, so the result equals a replay in one process.

What the hand-off costs is kept small: a piece travels as the bytes it was read as (no
pickled rows), with the job (the policies, the chain key, ``decode``: about 1.5 KB pickled
once) that a pool process unpickles once, and at most ``2 * (jobs - 1)`` pieces are in the
pool (memory stays bounded however long the replay). Reading runs in a thread
(``prefetched``): the audit's query for the next page overlaps the replay of this one (chDB
and clickhouse-connect release the GIL).

How the pool starts. Forking a process that runs other threads is unsafe (a lock another
thread holds stays held in the child for ever), and the reading process holds a ClickHouse
client (chDB's engine runs threads). So :func:`start_pool` forks the pool's processes only
while the calling process runs one thread (``/proc/self/task``): `baton replay` starts it
before it opens the audit, and the processes are ready in milliseconds with baton already
imported. Otherwise (a caller with threads, or no ``/proc``) the pool uses the
``forkserver`` start method, started in a thread while the reading process replays the
first pieces itself (a fresh interpreter importing baton: about 0.4 s that must not stand
between the audit and the first decisions).

A pool process that dies (the OOM killer, a crash) fails the replay (``ReplayFailed``,
exit 7) rather than leaving it waiting for the lost piece: the pool is a
``ProcessPoolExecutor``, which says so, not a ``multiprocessing.Pool``, which does not.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import multiprocessing
import os
import pickle
import queue
import signal
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Final, TypeVar

from baton.processors.recorded import Recorded
from baton.processors.replay import ReplayReport, replay_runs, runs_of
from baton.processors.replay_steps import RUN_RETENTION_S, TOMBSTONE_RETENTION_S
from baton.processors.replay_trimmed import judge_trimmed
from baton.schemas.env_names import REPLAY_TIMELINE
from baton.schemas.errors import ReplayFailed
from baton.schemas.policy import Policy

__all__ = [
    "as_rows",
    "check_timeline",
    "collecting_rarely",
    "mark",
    "owned_pool",
    "pool_failed",
    "prefetched",
    "replay_parallel",
    "replay_pieces",
    "run_pieces",
    "start_pool",
    "stop_pool",
]

_T = TypeVar("_T")
#: (new policy, recorded policies, chain key, decode, run retention, tombstone retention)
_Job = tuple[
    Policy, dict[str, Policy], bytes, Callable[[Any], Iterable[Sequence[object]]], float, float
]
#: the pickled job a pool process replays under, and the job: unpickled once per process
#: (the policies' compiled rules are made once, not once a piece)
_job: tuple[bytes, _Job] | None = None


#: a file: each process of `baton replay` appends when it did what (``mark``; docs/replay.md
#: "Where the time goes"); unset (""), nothing is written
_TIMELINE: Final = os.environ.get(REPLAY_TIMELINE, "")


def mark(what: str) -> None:
    """With ``BATON_REPLAY_TIMELINE`` set: one line appended to it, ``pid wall-clock
    process-CPU thread-CPU what`` (seconds), to see when each process works and waits. A
    debugging aid never fails a replay: a line that cannot be written (a disk filling up) is
    dropped; :func:`check_timeline` refuses a timeline that cannot be written at the start."""
    if _TIMELINE:
        with contextlib.suppress(OSError):
            _append(what)


def check_timeline() -> None:
    """The timeline's first line (``command``) written, or an OSError: a path that is there
    and no regular file (a folder, a FIFO, which would block the open for ever, a device), or
    one that cannot be appended to (a missing folder, a full disk)."""
    if _TIMELINE:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.stat(_TIMELINE).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
        _append("command")


def _append(what: str) -> None:
    line = f"{os.getpid()} {time.time():.4f} {time.process_time():.4f} "
    with open(_TIMELINE, "a") as out:
        out.write(f"{line}{time.thread_time():.4f} {what}\n")


def _replay_piece(job: bytes, piece: Any) -> ReplayReport:
    global _job
    mark("piece")
    if _job is None or _job[0] != job:
        _job = (job, pickle.loads(job))
    new_policy, policies, chain_key, decode, retention_s, tombstone_s = _job[1]
    report = replay_runs(
        runs_of(decode(piece)),
        new_policy,
        policies,
        chain_key,
        retention_s=retention_s,
        judge=False,
        tombstone_s=tombstone_s,
    )
    mark("piece done")
    return report


def as_rows(piece: list[Recorded]) -> list[Recorded]:
    """A piece of rows as its rows (``replay_pieces``' decode for pieces of ``run_pieces``)."""
    return piece


def _one_thread() -> bool:
    """This process runs one thread (False when it cannot tell: no ``/proc``)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


#: prctl's option: the signal a process gets when the thread that forked it ends (Linux)
_PR_SET_PDEATHSIG = 1


def _end_with(reader: int) -> None:
    """A forked pool process's start: it ends with the process that forked it (``reader``),
    and Ctrl-C is the reading process's to answer (``stop_pool``), not its own.

    A reading process killed (kill -9, the OOM killer, SIGTERM from ``timeout`` or a CI
    runner) shuts no pool down: its forked processes waited for work for ever, holding the
    command's stdout and stderr open (a CI step reading them never ended). Linux only
    (prctl); elsewhere they outlive it as before. Ctrl-C reaches every process of the
    terminal's group: a pool process waiting for work printed its traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # (no libc prctl: not Linux)
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != reader:  # the reader ended before the signal was asked for
        os._exit(1)


@contextlib.contextmanager
def collecting_rarely() -> Iterator[None]:
    """The collector as the worker runs it, for a replay: the objects made so far (the
    imported modules') frozen, young objects collected every 50,000 allocations. A replay
    makes a few short-lived containers a decision; at the default thresholds the collector
    took ~2.5 % of `baton replay`'s CPU, its full collections walking every module's objects.
    A pool forked inside inherits it; put back as it was after (a caller in the same process:
    tests, `baton demo`)."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def start_pool(processes: int) -> ProcessPoolExecutor | None:
    """A pool of ``processes`` forked now when this process runs one thread (call it before
    opening the audit: see the module docstring), else None (``replay_pieces`` then starts
    a forkserver pool of its own). The caller shuts it down."""
    if processes < 1 or not _one_thread():
        return None
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(processes, context, _end_with, (os.getpid(),))
    try:
        pool.submit(int)  # every process forked now, in this thread, before any other starts
    except OSError:
        # no process to fork (a container's pids limit, EAGAIN): the replay goes on in this
        # process, as when a forkserver pool cannot start, not a traceback and exit 1 (the
        # code of "the policy changes runs"); the processes forked before it are ended
        stop_pool(pool, wait=False)
        return None
    return pool


@contextlib.contextmanager
def owned_pool(processes: int) -> Iterator[ProcessPoolExecutor | None]:
    """``start_pool(processes)`` for a ``with`` block: shut down when the block ends, and
    stopped (``stop_pool``) when it ends by an exception (a failure, Ctrl-C: the work still in
    the pool is not needed)."""
    pool = start_pool(processes)
    try:
        yield pool
    except BaseException:
        if pool is not None:
            stop_pool(pool)
        raise
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def stop_pool(pool: ProcessPoolExecutor, wait: bool = True) -> None:
    """``pool``'s processes killed, what they were doing dropped: a replay that stops (a
    failure its answer is, Ctrl-C) does not first wait for the work no answer needs any more
    (a `--jobs` process reading a partition of millions of records: minutes)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=wait, cancel_futures=True)


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
    pool: ProcessPoolExecutor | None = None,
    tombstone_s: float = TOMBSTONE_RETENTION_S,
) -> ReplayReport:
    """``replay_runs`` over ``pieces`` (each whole runs in order, rows from ``decode(piece)``,
    a module-level function) in ``jobs`` processes: this one and a pool of ``jobs - 1``
    (1: this one only); ``pool``: that pool, started already (:func:`start_pool`; the
    caller shuts it down), else one is started here; ``wait``: the pool started before any
    piece is replayed. The runs read as trimmed are judged over all pieces
    (``replay_trimmed``; ``judge`` False: by the caller, for a read with a lower time bound)."""
    report = _replay_pieces(
        pieces, decode, new_policy, policies, chain_key, jobs, progress, wait, retention_s,
        tombstone_s, pool,
    )  # fmt: skip
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
    tombstone_s: float,
    pool: ProcessPoolExecutor | None = None,
) -> ReplayReport:
    """``replay_pieces``' replay, the runs read as trimmed not judged."""
    report = ReplayReport()
    decided = 0
    job = (new_policy, policies, chain_key)

    def here(piece: _T) -> ReplayReport:
        mark("here")
        done = replay_runs(
            runs_of(decode(piece)), *job, retention_s=retention_s, judge=False,
            tombstone_s=tombstone_s,
        )  # fmt: skip
        mark("here done")
        return done

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
    pickled = pickle.dumps((*job, decode, retention_s, tombstone_s))
    started: list[ProcessPoolExecutor] = [pool] if pool is not None else []
    owned: list[ProcessPoolExecutor] = []  # started here: shut down here

    def start() -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["baton.processors.replay_pool", decode.__module__])
        pool = ProcessPoolExecutor(jobs - 1, ctx)
        with contextlib.suppress(BrokenProcessPool):  # (seen at the first piece's result)
            pool.submit(int).result()  # its processes started
        owned.append(pool)
        started.append(pool)

    starter = threading.Thread(target=start, daemon=True)
    if pool is None:
        starter.start()
        if wait:
            starter.join()
    #: every piece's report in read order: done (replayed here) or still in the pool
    waiting: deque[ReplayReport | Future[ReplayReport]] = deque()
    in_pool = 0  # pieces handed to the pool and not merged yet
    #: pieces in flight per pool process: one replayed, two queued behind it (this process
    #: hands pieces out between its own: with one queued, a pool process finishing two
    #: pieces while this one decided one of its own and read pages waited, ~5 % of its time)
    most = 3 * (jobs - 1)

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
                waiting.append(started[0].submit(_replay_piece, pickled, piece))
                in_pool += 1
            else:
                waiting.append(here(piece))
            merge_ready(block=False)
        mark("read all: waiting for the pool")
        merge_ready(block=True)
        mark("merged all")
    except BrokenProcessPool as exc:
        raise pool_failed(exc) from None
    finally:
        if starter.is_alive():
            starter.join()
        for mine in owned:
            mine.shutdown(wait=True, cancel_futures=True)
    return report


def pool_failed(exc: BrokenProcessPool) -> ReplayFailed:
    """What fails the replay when a pool process died (the OOM killer, a crash) or its answer
    did not load: its piece is lost (a multiprocessing.Pool lost it and waited for ever)."""
    return ReplayFailed(
        f"a `--jobs` replay process failed before its piece was replayed ({_why(exc)}): "
        "killed (out of memory?) or its answer could not be read back; replay again, "
        "with fewer --jobs or --jobs 1"
    )


def _why(exc: BrokenProcessPool) -> str:
    """What the pool said, and the last line of the pool process's own error if it sent one."""
    lines = [line.strip() for line in str(exc.__cause__ or "").splitlines()]
    cause = [line for line in lines if line.strip("'\"")]  # (a remote traceback's quotes)
    return f"{exc}; {cause[-1][:200]}" if cause else str(exc)


def run_pieces(runs: Iterable[list[Recorded]], rows: int) -> Iterator[list[Recorded]]:
    """``runs`` as pieces of whole runs of at least ``rows`` rows (the last: fewer)."""
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
    pieces = run_pieces(runs_of(rows), piece_rows)
    return replay_pieces(pieces, as_rows, new_policy, policies, chain_key, jobs, progress, wait)


def prefetched(items: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """``items``, produced by a thread up to ``depth`` ahead (reading overlaps replaying);
    an exception in the thread is raised here, where the item would have come."""
    ahead: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                mark("page read")
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
            if _TIMELINE and ahead.empty():
                mark("waiting for a page")
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
