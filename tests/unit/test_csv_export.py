"""`baton sql -f csv` gives back the stored text (session 29, H2).

A run id holding a bare CR split its CSV row in two and shifted every later row (Python's
writer quoted an LF only, with LF row ends), and click stripped ANSI sequences from the
output when it was piped, so an exported id named no run. On a terminal the cells are shown
escaped, as the table and `baton trace` show them."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from baton.cli.query_cmds import sql_cmd
from baton.sinks.render import render
from tests.unit.test_attacks_session9_audit import HOSTILE_RUN, HOSTILE_TASK, _hostile_audit

pytestmark = pytest.mark.unit


def _read(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


@given(st.lists(st.lists(st.text(max_size=20), min_size=2, max_size=2), max_size=5))
def test_any_text_reads_back_from_the_csv_as_stored(rows: list[list[str]]) -> None:
    out = render(["a", "b"], rows, "csv")
    assert _read(out) == [["a", "b"], *rows]


def test_a_bare_cr_is_quoted_and_rows_stay_apart() -> None:
    rows = [["h_cr\rOVER", "t"], ["h_esc\x1b[31mRED\x1b[0m", "u"], ["x\rFAKE_RUN,fake", "v"]]
    out = render(["run_id", "task"], rows, "csv")
    assert _read(out)[1:] == rows
    assert out.count("\n") == len(rows)  # one line a row: LF row ends as before


def test_on_a_terminal_no_control_reaches_the_screen() -> None:
    out = render(["run\x1b[2J", "task"], [["h\x1b[31mRED\r", "\u202et"]], "csv", terminal=True)
    assert all(line.isprintable() for line in out.splitlines()), repr(out)
    assert "\\x1b[31m" in out and "\\u202e" in out


def test_baton_sql_csv_piped_keeps_a_clients_escape_sequences(tmp_path: Path) -> None:
    chdb = _hostile_audit(tmp_path)
    query = "SELECT run_id, task_id FROM governance.decisions FINAL ORDER BY decided_at"
    result = CliRunner().invoke(sql_cmd, [query, "-f", "csv", "--dsn", f"chdb://{chdb}"])
    assert result.exit_code == 0, result.output
    assert _read(result.output.rstrip("\n"))[1:] == [[HOSTILE_RUN, HOSTILE_TASK]] * 2
