"""`baton replay`'s table names the runs that make it exit 7 (session 18 H6): with thousands of
runs partial (a --from-kafka read from a topic's start, an audit at its retention horizon),
the table shows 20 of them, in the order found, and the broken run the exit message names
("first: X, listed above as partial with why") was not among them. The broken runs are
listed first; the list stays bounded."""

from __future__ import annotations

import pytest

from baton.cli.replay_output import _table
from baton.processors.replay import ReplayReport
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit


def test_the_broken_run_is_shown_among_thousands_of_partial_ones() -> None:
    report = ReplayReport()
    for n in range(5_000):
        report.partial[f"run-{n:05}"] = "its history does not start in what was read"
    report.partial["run-broken"] = (
        "a record of it is stamped past 2200: when it was read is unknown"
    )
    report.broken.append("run-broken")
    table = _table(report, policy_with(max_handoffs=2), "p.yaml", "Kafka", 1.0)
    assert "run-broken" in table
    assert len(table.splitlines()) < 40 and "partial, not replayed: 5,001 runs" in table
