"""A page of recorded decisions whose runs are not in run id order (a run's rows apart) is
refused, never replayed as two runs (session 19). ClickHouse gives no order without ORDER BY:
a FINAL query read by one thread returned 97 runs out of order on a 480k-row audit, so the
page query keeps its sort (~1 s of chDB's CPU there) and this checks what it promises."""

from __future__ import annotations

import orjson
import pytest

from baton.schemas.errors import AuditUnavailable
from baton.sinks.replay_source import page_rows, split_page
from tests.unit.test_replay_read import _page, _rows

pytestmark = pytest.mark.unit


def test_a_page_whose_run_comes_again_after_another_is_refused() -> None:
    rows = _rows(2, 2)
    first = [r for r in rows if r.run_id == rows[0].run_id]
    second = [r for r in rows if r.run_id != rows[0].run_id]
    page = _page([*first[:2], *second, *first[2:]])
    with pytest.raises(AuditUnavailable, match="not in run order"):
        list(page_rows(page))


def test_a_piece_cut_before_an_earlier_run_is_refused_by_the_reader() -> None:
    lines = [orjson.dumps([f"r{i}", "x" * 40, j]) for i in (2, 1) for j in range(3)]
    with pytest.raises(AuditUnavailable, match=r"not in run order \(run r1 after run r2\)"):
        list(split_page(b"\n".join(lines) + b"\n", 1))
