"""`baton replay` on several cores: runs are independent, so chunks of them go to processes.

The reading process groups rows into runs and hands chunks of whole runs to a pool of
``jobs`` processes, each running ``replay.replay_runs``; reports are merged in the order the
chunks were read, so the result equals a replay in one process. A short replay never starts
the pool (its start-up costs about a second): the first ``serial_rows`` rows are replayed in
the reading process, and the pool starts only if more follow.

The pool uses the ``forkserver`` start method: the reading process holds a ClickHouse client
(chDB's engine runs threads), and forking a process with threads is unsafe.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from baton.processors.replay import Recorded, ReplayReport, replay_runs, runs_of
from baton.schemas.policy import Policy

__all__ = ["replay_parallel"]

#: rows per chunk handed to a process: big enough that pickling is a small share
_CHUNK_ROWS = 5_000


def _merge(into: ReplayReport, part: ReplayReport) -> None:
    into.runs.extend(part.runs)
    into.partial.update(part.partial)
    into.transitions.update(part.transitions)


def _chunks(runs: Iterable[list[Recorded]], rows: int) -> Iterator[list[list[Recorded]]]:
    chunk: list[list[Recorded]] = []
    size = 0
    for run in runs:
        chunk.append(run)
        size += len(run)
        if size >= rows:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _replay_chunk(task: tuple[list[list[Recorded]], Policy, dict[str, Policy], bytes]) -> Any:
    runs, new_policy, policies, key = task
    return replay_runs(runs, new_policy, policies, key)


def replay_parallel(
    rows: Iterable[Sequence[object] | Recorded],
    new_policy: Policy,
    policies: dict[str, Policy],
    chain_key: bytes = b"",
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
    serial_rows: int = 20_000,
) -> ReplayReport:
    """``replay_runs`` over ``rows`` (REPLAY_COLUMNS order, run by run) with ``jobs``
    processes once more than ``serial_rows`` rows came."""
    report = ReplayReport()
    chunks = _chunks(runs_of(rows), _CHUNK_ROWS)
    read = 0
    for chunk in chunks:
        _merge(report, replay_runs(chunk, new_policy, policies, chain_key))
        read += sum(len(run) for run in chunk)
        if progress is not None:
            progress(len(report.runs) + len(report.partial), report.decisions)
        if read >= serial_rows and jobs > 1:
            break
    else:
        return report
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["baton.processors.replay"])
    tasks = ((chunk, new_policy, policies, chain_key) for chunk in chunks)
    with ctx.Pool(jobs) as pool:
        for part in pool.imap(_replay_chunk, tasks):
            _merge(report, part)
            if progress is not None:
                progress(len(report.runs) + len(report.partial), report.decisions)
    return report
