"""`baton replay`'s speed work of the tenth session (issue 14): what each change must keep.

The pool of a `--jobs` replay is kept fed (four pieces in flight per process, two before),
and the pieces beyond two it has not begun when the reading ends are taken back by the
reading process, which would otherwise wait idle for them; the report is the one process's
all the same.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from baton.processors.replay_pool import _replay_piece, replay_pieces, start_pool
from baton.sinks.replay_source import page_rows
from tests.unit.test_engine_support import policy_with
from tests.unit.test_replay import KEY, _budget_history, _policies, record
from tests.unit.test_replay_read import _page

pytestmark = pytest.mark.unit

#: the pieces this process decoded (a pool process appends to its own copy)
_DECODED_HERE: list[bytes] = []


def _decode_here(piece: bytes) -> object:
    _DECODED_HERE.append(piece)
    return page_rows(piece)


class _Counting:
    """A pool that counts the pieces handed to it."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.pieces = pool, 0

    def submit(self, fn: Any, *args: Any) -> Any:
        self.pieces += fn is _replay_piece
        return self.pool.submit(fn, *args)


def test_the_pool_holds_four_pieces_and_those_it_has_not_begun_at_the_end_are_replayed_here() -> (
    None
):
    loose, strict = policy_with(max_handoffs=20), policy_with(max_handoffs=3)
    rows = [r for i in range(8) for r in record(loose, _budget_history(f"r{i:02d}", 5, 1.0))]
    pieces = [_page(rows[at : at + 10]) for at in range(0, len(rows), 10)]  # 8: a run each
    one = replay_pieces(pieces, page_rows, strict, _policies(loose), KEY, jobs=1)
    # (a forkserver pool: start_pool forks only in a process that runs one thread)
    pool = start_pool(1) or ProcessPoolExecutor(1, multiprocessing.get_context("forkserver"))
    try:
        # the pool's one process is busy for a second, and its call queue full behind it
        # (two more calls): the pieces handed to it wait, none begun
        busy = [pool.submit(time.sleep, s) for s in (1.0, 0.0, 0.0)]
        _DECODED_HERE.clear()
        counting = _Counting(pool)
        two = replay_pieces(
            pieces, _decode_here, strict, _policies(loose), KEY, jobs=2, pool=counting
        )
        for call in busy:
            call.result()
    finally:
        pool.shutdown(wait=True)
    assert [r.run_id for r in two.runs] == [r.run_id for r in one.runs]
    assert two.transitions == one.transitions and two.decisions == one.decisions == len(rows)
    # four pieces handed to the pool (two before: it waited for this process to hand it the
    # next); the two newest, not begun when the reading ended, are taken back and replayed
    # here; the two oldest stay in the pool (a hostile piece handed to it first is replayed
    # there: tests/unit/test_attacks_session6_replay_pool.py)
    assert counting.pieces == 4
    assert len(_DECODED_HERE) == len(pieces) - 2
