"""Attacks on the audit replay (`baton replay` without --from-kafka) found while building the
gov.decisions replay (session 20 H1): the same records `--from-kafka` breaks the run for
(tests/unit/test_attacks_session20_replay_decisions.py). Both hid a change (exit 0) until the
lead's fix (sinks/replay_source.py `ReplayScope.where`): a chained row of the control
follower's shape is read as a step (follower records are never chained), and `--since` takes
the runs with a row stored in the range too (`inserted_at`, the sink's clock)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from baton.cli.replay_cmds import replay_audit
from baton.processors.recorded import policy_in_force
from baton.schemas.decision import Phase
from baton.sinks.replay_source import ReplayScope, read_policies
from tests.chdb_audit import chdb_audit
from tests.unit.test_attacks_session20_replay_decisions import BASELINE, STRICTER, _history, _ra
from tests.unit.test_engine_support import at
from tests.unit.test_replay_decisions_support import KEY
from tests.unit.test_replay_kafka_read_order import _exit_code

pytestmark = pytest.mark.unit


def test_a_runs_last_steps_rewritten_as_follower_records_do_not_hide_their_change(
    tmp_path: Path,
) -> None:
    """ra's four handoffs under a policy of 20, stored by the sink; its third and fourth
    (the stricter policy's stops) written again as follower records."""
    _, worker = _history()
    ra = _ra(worker)
    forged = [dataclasses.replace(d, phase=Phase.CONTROL, input=None) for d in ra[2:]]
    client = chdb_audit(tmp_path / "chdb", [policy_in_force(BASELINE, at(0), "w"), *ra, *forged])
    try:
        policies, _ = read_policies(client)
        report = replay_audit(client, ReplayScope(), STRICTER, policies, KEY, 1)
    finally:
        client.close()
    assert _exit_code(report) in (1, 7), [(r.run_id, r.decisions, r.changed) for r in report.runs]


def test_a_runs_steps_moved_before_since_do_not_take_it_out_of_scope(tmp_path: Path) -> None:
    """ra's first two handoffs at 0-1 s, its third and fourth (the stricter policy's stops)
    at 100-101 s, rb at 100 s; the third and fourth re-published decided at 2-3 s, the parts
    merged."""
    from baton.sinks.replay_source import ReplayScope
    from tests.unit.test_engine_support import handoff
    from tests.unit.test_replay_decisions_support import DecisionsTopic, Worker

    worker = Worker(DecisionsTopic(2), BASELINE)
    for n in range(4):
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), n if n < 2 else 98 + n)
    worker.decide(handoff("rb-h0", "t0", "p", "q", run_id="rb"), 100)
    decided = [d for d in worker.published if not d.reemitted]
    moved = [dataclasses.replace(d, decided_at=at(n)) for n, d in enumerate(_ra(worker)[2:], 2)]
    client = chdb_audit(
        tmp_path / "chdb", [policy_in_force(BASELINE, at(0), "w"), *decided, *moved]
    )
    try:
        # merged, as ClickHouse merges parts in the background: the replaced rows are gone
        # (unmerged, --since's subquery, which reads no FINAL, still finds them)
        client.command("OPTIMIZE TABLE governance.decisions FINAL")
        policies, _ = read_policies(client)
        report = replay_audit(client, ReplayScope(since=at(50)), STRICTER, policies, KEY, 1)
    finally:
        client.close()
    assert _exit_code(report) in (1, 7), [(r.run_id, r.decisions, r.changed) for r in report.runs]
