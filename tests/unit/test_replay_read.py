"""What `baton replay` hands between reading and replaying: pages of the audit's JSON rows, cut
into pieces of whole runs, decoded where they are replayed, on one process or several."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.processors.replay import replay_runs, runs_of
from baton.processors.replay_pool import prefetched, replay_parallel, replay_pieces, start_pool
from baton.schemas.errors import AuditUnavailable
from baton.sinks.replay_source import _growing, page_rows, split_page
from tests.unit.test_engine_support import policy_with
from tests.unit.test_replay import KEY, _budget_history, _policies, record

pytestmark = pytest.mark.unit

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def runs_page(runs: list[tuple[int, int]]) -> bytes:
    """A page of runs of ``n`` rows each, a row's text ``pad`` × its place in the run long."""
    lines = [
        orjson.dumps([f"r{i:05d}", "x" * (pad * (j + 1)), j])
        for i, (n, pad) in enumerate(runs)
        for j in range(n)
    ]
    return b"\n".join(lines) + b"\n"


def _page(rows: list) -> bytes:
    """Rows as the audit's query writes them (JSONCompactEachRow, decided_at in µs)."""
    lines = []
    for r in rows:
        row = list(r)
        row[6] = (r.decided_at - _EPOCH) // timedelta(microseconds=1)
        lines.append(orjson.dumps(row))
    return b"\n".join(lines) + b"\n"


_LOOSE = policy_with(max_handoffs=20)


def _rows(runs: int, handoffs: int) -> list:
    out: list = []
    for i in range(runs):
        out += record(_LOOSE, _budget_history(f'run-{i:02d}\n"x', handoffs, 1.0))
    return out


def test_a_page_decodes_to_the_rows_it_was_made_of_times_exact_to_the_microsecond() -> None:
    rows = _rows(3, 2)
    decoded = list(page_rows(_page(rows)))
    assert decoded == rows
    assert all(r.decided_at.tzinfo is not None for r in decoded)


def test_pieces_hold_whole_runs_and_together_the_whole_page() -> None:
    rows = _rows(5, 3)  # 6 rows a run, run ids with a newline and a quote in them
    page = _page(rows)
    pieces = list(split_page(page, 4))
    assert len(pieces) == 5  # 4 rows asked, a run is never cut: one run (6 rows) a piece
    assert [r for p in pieces for r in page_rows(p)] == rows
    for piece in pieces:
        assert len({r.run_id for r in page_rows(piece)}) == 1
    assert len(list(split_page(page, 10_000))) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 6), st.integers(0, 80)), min_size=1, max_size=12),
    st.integers(1, 9),
)
def test_a_page_cut_anywhere_by_bytes_gives_whole_runs_in_order(
    runs: list[tuple[int, int]], rows: int
) -> None:
    # runs of 1-6 rows of any length: every piece ends a run, and the pieces are the page
    page = runs_page(runs)
    pieces = list(split_page(page, rows))
    assert b"\n".join(pieces) + b"\n" == page
    seen = [[orjson.loads(line)[0] for line in piece.split(b"\n")] for piece in pieces]
    assert all(a[-1] != b[0] for a, b in pairwise(seen))  # no run cut
    if rows >= sum(n for n, _ in runs):  # the page's rows asked: one piece
        assert len(pieces) == 1
    assert list(split_page(b"\n\n", rows)) == []


def test_pages_start_small_and_grow_to_their_size_so_replay_starts_before_reading_ends() -> None:
    # where pages may end: every 10 rows (a run of 25 rows crosses two marks at once)
    bounds = [("a", 10), ("b", 20), ("c", 45), ("d", 50), ("e", 60), ("f", 70), ("g", 80)]
    bounds += [(f"h{i:03d}", 80 + 10 * i) for i in range(1, 30)]
    ends = _growing(bounds, 10, 40)
    sizes, last = [], 0
    for end in ends:
        upto = dict(bounds)[end]
        sizes.append(upto - last)
        last = upto
    # 10, then 20 asked (a run ending at 45 makes it 35), then 40 asked (marks every 10: 45)
    assert sizes[:3] == [10, 35, 45]
    assert all(40 <= size < 50 for size in sizes[2:])
    assert _growing([], 10, 40) == []


def test_a_page_that_is_not_json_rows_names_what_it_got() -> None:
    with pytest.raises(AuditUnavailable, match=r"not JSON rows .*starts b'\[<html>"):
        list(page_rows(b"<html>proxy error</html>\n"))


def test_a_forged_row_that_is_not_utf8_fails_its_own_run_not_the_page() -> None:
    rows = _rows(2, 2)
    page = _page(rows)
    forged_run = rows[0].run_id.encode()
    lines = page.split(b"\n")
    lines[1] = lines[1].replace(b"researcher", b"research\xffr", 1)  # no JSON text holds it
    assert forged_run.replace(b"\n", b"\\n").replace(b'"', b'\\"') in lines[1]
    pieces = list(split_page(b"\n".join(lines), 1))
    decoded = [r for p in pieces for r in page_rows(p)]
    assert len(pieces) == 2 and "\ufffd" in decoded[1].input
    report = replay_runs(runs_of(decoded), _LOOSE, _policies(_LOOSE), KEY)
    assert [r.run_id for r in report.unfaithful_runs] == [rows[0].run_id]
    assert [r.run_id for r in report.runs if not r.unfaithful] == [rows[-1].run_id]


def test_several_processes_report_what_one_does_in_the_same_order() -> None:
    loose, strict = policy_with(max_handoffs=20), policy_with(max_handoffs=3)
    rows = [r for i in range(30) for r in record(loose, _budget_history(f"r{i:02d}", 5, 1.0))]
    one = replay_parallel(rows, strict, _policies(loose), KEY, jobs=1)
    # pieces of 20 rows (2 runs) shared by this process and a pool of one, once it started
    two = replay_parallel(rows, strict, _policies(loose), KEY, 2, piece_rows=20, wait=True)
    assert [r.run_id for r in two.runs] == [r.run_id for r in one.runs]
    assert two.transitions == one.transitions and two.decisions == one.decisions == len(rows)
    assert len(list(runs_of(rows))) == len(one.runs) == 30 and not two.unfaithful_runs


_FORKED = """
import os

from baton.processors.replay_pool import replay_pieces, start_pool
from baton.sinks.replay_source import page_rows
from tests.unit.test_engine_support import policy_with
from tests.unit.test_replay import KEY, _budget_history, _policies, record
from tests.unit.test_replay_read import _page

loose, strict = policy_with(max_handoffs=20), policy_with(max_handoffs=3)
rows = [r for i in range(12) for r in record(loose, _budget_history(f"r{i:02d}", 5, 1.0))]
pieces = [_page(rows[at : at + 10]) for at in range(0, len(rows), 10)]
print("before the fork", flush=False)  # unflushed: no child may write it again
pool = start_pool(1)
assert pool is not None and pool._mp_context.get_start_method() == "fork"
children = list(pool._processes)
try:
    one = replay_pieces(pieces, page_rows, strict, _policies(loose), KEY, jobs=1)
    two = replay_pieces(pieces, page_rows, strict, _policies(loose), KEY, jobs=2, pool=pool)
finally:
    pool.shutdown(wait=True)
assert [r.run_id for r in two.runs] == [r.run_id for r in one.runs], "order"
assert two.transitions == one.transitions and two.decisions == one.decisions == len(rows)
assert len(children) == 1 and children[0] != os.getpid()
print("same report", len(one.runs), "runs")
"""


def test_the_command_s_pool_is_forked_before_the_audit_opens_and_reports_as_one_process() -> None:
    # `baton replay` forks its pool while it runs one thread (before chDB's threads start):
    # ready in milliseconds; the report is the one process's, in order; a line the parent
    # wrote before the fork is written once
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", _FORKED], cwd=root, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["before the fork", "same report 12 runs"]


def test_the_command_with_two_jobs_reports_what_one_job_does(tmp_path: Path) -> None:
    # 5,000 recorded decisions or more: `baton replay --jobs 2` replays them in two
    # processes (its pool forked before the audit opens) and reports what --jobs 1 does
    from bench.replay_bench import KEY as BENCH_KEY
    from bench.replay_bench import record as bench_record
    from tests.chdb_audit import chdb_audit

    decisions = bench_record(800, 6_000, policy_with(max_handoffs=20))
    chdb_audit(tmp_path / "chdb", decisions).close()
    (tmp_path / "stricter.yaml").write_text("multi_agent:\n  max_handoffs: 3\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "BATON_AUDIT_CHAIN_KEY": BENCH_KEY.decode()}
    reports = []
    for jobs in ("1", "2"):
        argv = ["replay", "--policy", str(tmp_path / "stricter.yaml"), "--jobs", jobs]
        argv += ["--dsn", f"chdb://{tmp_path / 'chdb'}", "--format", "json"]
        code = "from baton.cli.main import main; main()"
        out = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True)
        assert out.returncode == 1, out.stderr[-2000:]  # (the stricter policy changes runs)
        reports.append(orjson.loads(out.stdout))
    one, two = ({k: v for k, v in r.items() if k != "seconds"} for r in reports)
    assert two == one and one["faithful"] and one["decisions"] >= 5_000 and not one["partial"]


def test_no_pool_is_forked_from_a_process_running_other_threads() -> None:
    # forking copies a lock another thread holds, held for ever in the child: with a second
    # thread running (chDB's, here a waiting one) start_pool declines, and replay_pieces
    # starts a forkserver pool of its own
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    try:
        assert start_pool(1) is None
        rows = [r for i in range(4) for r in record(_LOOSE, _budget_history(f"t{i}", 3, 1.0))]
        pieces = [_page(rows[:6]), _page(rows[6:])]
        report = replay_pieces(pieces, page_rows, _LOOSE, _policies(_LOOSE), KEY, 2, wait=True)
        assert report.decisions == len(rows) and len(report.runs) == 4
    finally:
        release.set()
    assert start_pool(0) is None


def test_a_reading_error_is_raised_where_the_page_would_have_come() -> None:
    def pages() -> Iterator[bytes]:
        yield b"first"
        raise AuditUnavailable("chdb:///x: the audit went away")

    got = prefetched(pages())
    assert next(got) == b"first"
    with pytest.raises(AuditUnavailable, match="went away"):
        next(got)


def test_replay_json_writes_a_run_ids_terminal_controls_escaped() -> None:
    # H2 (session 27, F9): `baton replay --format json` printed U+009B (CSI), U+202E and
    # U+2028 of a client's run id raw; the document read back is the same
    from baton.cli.replay_output import printable_lines

    hostile = "c1\u009b2J\u009d0;t\u009c\u202eevil\u202c\u2028x"
    doc = {"changes": [{"run_id": hostile, "n": 1}], "runs": 1}
    raw = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    out = printable_lines(raw)
    assert out.isascii() and out.count(b"\n") == raw.count(b"\n")
    assert orjson.loads(out) == doc
    assert printable_lines(b'{\n  "a": 1\n}') == b'{\n  "a": 1\n}'
