"""An attack on the audit replay (`baton replay` without --from-kafka) found while building the
gov.decisions replay (session 20 H1), left for the lead as a strict xfail: the same records
`--from-kafka` now breaks the run for (tests/unit/test_attacks_session20_replay_decisions.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from baton.cli.replay_cmds import replay_audit
from baton.processors.recorded import policy_in_force
from baton.sinks.replay_source import ReplayScope, read_policies
from tests.chdb_audit import chdb_audit
from tests.unit.test_attacks_session20_replay_decisions import BASELINE, STRICTER, _history, _ra
from tests.unit.test_engine_support import at
from tests.unit.test_replay_decisions_support import KEY
from tests.unit.test_replay_kafka_read_order import _exit_code

pytestmark = pytest.mark.unit


@pytest.mark.xfail(
    strict=True,
    reason="H1 break (session 20, audit replay): a writer of gov.decisions re-publishes a "
    "run's last decisions under their ids as control follower records (phase control, no "
    "input), the same outcome, reason and chain hash: FINAL keeps them (the last inserted), "
    "ReplayScope.where leaves follower records out, so the run ends before them: the "
    "stricter policy's stops of those steps unseen, exit 0 (`baton audit verify` names the "
    "rows altered; decision_conflicts does not: the same outcome, reason and hash)",
)
def test_a_runs_last_steps_rewritten_as_follower_records_do_not_hide_their_change(
    tmp_path: Path,
) -> None:
    """ra's four handoffs under a policy of 20, stored by the sink; its third and fourth
    (the stricter policy's stops) written again as follower records."""
    _, worker = _history()
    ra = _ra(worker)
    forged = [dataclasses.replace(d, phase="control", input=None) for d in ra[2:]]
    client = chdb_audit(tmp_path / "chdb", [policy_in_force(BASELINE, at(0), "w"), *ra, *forged])
    try:
        policies, _ = read_policies(client)
        report = replay_audit(client, ReplayScope(), STRICTER, policies, KEY, 1)
    finally:
        client.close()
    assert _exit_code(report) in (1, 7), [(r.run_id, r.decisions, r.changed) for r in report.runs]
