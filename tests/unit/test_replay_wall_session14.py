"""`baton replay --jobs N` keeps every process deciding from the first page to the last
(session 14): the first and last pieces are small, the pool holds a piece more, and
``BATON_REPLAY_TIMELINE`` writes when each process worked."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.processors.replay_pool import replay_pieces
from baton.sinks.replay_source import page_rows, split_page
from tests.unit.test_engine_support import policy_with
from tests.unit.test_replay import KEY, _budget_history, _policies, record
from tests.unit.test_replay_read import _page, runs_page

pytestmark = pytest.mark.unit


def _lines(runs: int, rows_a_run: int) -> list[bytes]:
    return [
        orjson.dumps([f"r{i:05d}", "x" * 40, j]) for i in range(runs) for j in range(rows_a_run)
    ]


def _rows_of(piece: bytes) -> int:
    return piece.count(b"\n") + 1


def test_with_a_share_the_first_pieces_are_small_and_grow_and_the_last_ones_shrink() -> None:
    page = b"\n".join(_lines(16_000, 1)) + b"\n"  # 16,000 runs of one row
    plain = [_rows_of(p) for p in split_page(page, 1_000)]
    assert plain == [1_000] * 16
    # the scope's only page: pieces of 250 rows (the fewest) until half the rows cut is
    # more, growing; then a sixteenth of the rows left, down to 250 at the end
    sizes = [_rows_of(p) for p in split_page(page, 1_000, left=16_000, done=0, share=16)]
    assert sum(sizes) == 16_000
    assert sizes[:5] == [250, 250, 250, 375, 562] and 800 < max(sizes) < 1_000
    assert sizes[-10:-1] == [250] * 9 and sizes[-1] <= 250
    top = sizes.index(max(sizes))
    assert sizes[:top] == sorted(sizes[:top]) and sizes[top:] == sorted(sizes[top:])[::-1]
    # a later page with many rows after it: full sized pieces only
    later = [_rows_of(p) for p in split_page(page, 1_000, left=90_000, done=50_000, share=16)]
    assert later == plain


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 6), st.integers(0, 80)), min_size=1, max_size=40),
    st.integers(1, 9),
    st.integers(0, 500),
    st.integers(0, 500),
    st.integers(1, 32),
)
def test_pieces_sized_by_a_share_are_still_whole_runs_and_the_whole_page(
    runs: list[tuple[int, int]], rows: int, left: int, done: int, share: int
) -> None:
    page = runs_page(runs)
    pieces = list(split_page(page, rows, left, done, share))
    assert b"\n".join(pieces) + b"\n" == page
    seen = [[orjson.loads(line)[0] for line in piece.split(b"\n")] for piece in pieces]
    assert all(a[-1] != b[0] for a, b in pairwise(seen))  # no run cut


class _Later(Future):  # type: ignore[type-arg]
    """A pool's answer that is never ready before it is waited for (a slow pool)."""

    def __init__(self, work: Any) -> None:
        super().__init__()
        self.work = work

    def done(self) -> bool:
        return False

    def result(self, timeout: float | None = None) -> Any:
        return self.work()


class _SlowPool:
    def __init__(self) -> None:
        self.handed = 0

    def submit(self, fn: Any, *args: Any) -> Future:  # type: ignore[type-arg]
        self.handed += 1
        return _Later(lambda: fn(*args))


def test_a_pool_process_holds_three_pieces_so_it_never_waits_for_the_reading_process() -> None:
    # the reading process hands pieces out between its own: a pool process with one piece
    # queued behind the one it decides ran dry while the reader decided and read (~5 % of
    # its time); with two queued it has work until the reader's next hand-out
    loose, strict = policy_with(max_handoffs=20), policy_with(max_handoffs=3)
    rows = [r for i in range(12) for r in record(loose, _budget_history(f"w{i:02d}", 3, 1.0))]
    pieces = [_page(rows[at : at + 12]) for at in range(0, len(rows), 12)]  # 2 runs each
    one = replay_pieces(pieces, page_rows, strict, _policies(loose), KEY, jobs=1)
    pool = _SlowPool()
    two = replay_pieces(pieces, page_rows, strict, _policies(loose), KEY, 2, pool=pool)  # type: ignore[arg-type]
    assert pool.handed == 3
    assert [r.run_id for r in two.runs] == [r.run_id for r in one.runs]
    assert two.transitions == one.transitions and two.decisions == one.decisions == len(rows)


_TIMED = """
from baton.processors.replay_pool import replay_pieces, start_pool
from baton.sinks.replay_source import page_rows
from tests.unit.test_engine_support import policy_with
from tests.unit.test_replay import KEY, _budget_history, _policies, record
from tests.unit.test_replay_read import _page, runs_page

loose = policy_with(max_handoffs=20)
rows = [r for i in range(12) for r in record(loose, _budget_history(f"t{i:02d}", 5, 1.0))]
pieces = [_page(rows[at : at + 10]) for at in range(0, len(rows), 10)]
pool = start_pool(1)
try:
    replay_pieces(pieces, page_rows, loose, _policies(loose), KEY, jobs=2, pool=pool)
finally:
    pool.shutdown(wait=True)
print(pool is not None, len(pieces))
"""


def test_the_timeline_says_when_each_process_decided_its_pieces(tmp_path: Path) -> None:
    # BATON_REPLAY_TIMELINE: each process appends "pid time cpu thread-cpu what" lines
    # (docs/replay.md "Where the time goes"); unset, nothing is written
    root = Path(__file__).resolve().parents[2]
    timeline = tmp_path / "timeline.txt"
    # (the PYTHONPATH given kept first: a compiled build's site, tests/integration/
    # test_compiled_core.py)
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(root)) if p)
    env = {**os.environ, "PYTHONPATH": path, "BATON_REPLAY_TIMELINE": str(timeline)}
    out = subprocess.run(
        [sys.executable, "-c", _TIMED], cwd=root, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.split() == ["True", "12"], out.stderr[-3000:]
    marks = [line.split(None, 4) for line in timeline.read_text().splitlines()]
    assert all(len(m) == 5 and float(m[1]) > 0 and float(m[2]) >= 0 for m in marks)
    by_pid: dict[str, list[str]] = {}
    for pid, _at, _cpu, _thread, what in marks:
        by_pid.setdefault(pid, []).append(what)
    assert len(by_pid) == 2
    reader = next(p for p, whats in by_pid.items() if "merged all" in whats)
    pool = next(p for p in by_pid if p != reader)
    assert by_pid[pool].count("piece") == by_pid[pool].count("piece done") >= 1
    assert by_pid[reader].count("here") == by_pid[reader].count("here done")
    assert by_pid[pool].count("piece") + by_pid[reader].count("here") == 12  # each once
    env.pop("BATON_REPLAY_TIMELINE")
    timeline.unlink()
    subprocess.run([sys.executable, "-c", _TIMED], cwd=root, env=env, check=True)
    assert not timeline.exists()
