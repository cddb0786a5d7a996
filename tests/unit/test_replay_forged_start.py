"""`baton replay` (the audit) over a forged copy of a run's chain start (session 18 H6).

A writer of gov.decisions republishes a run's first decision with its link altered (it names a
predecessor) and its time moved to the start of what is read: governance.decisions keeps one
row per (tenant, run_id, decision_id) in FINAL (ReplacingMergeTree), so the copy replaces the
worker's row; its outcome, reason and chain hash are the worker's, so decision_conflicts does
not pair them either. The run read "trimmed", its first row within a day of the oldest row
read: retention's cut (processors/replay_trimmed.py), partial, its change hidden, exit 0. A
run read as trimmed whose first row does not hash to its chain hash (the chain key, else the
empty key, as `baton audit verify` rehashes), or whose named link is the chain hash of a
record under a decision id that holds another row now (a copy without a chain replaced the
start), had its start altered: broken, exit 7."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from baton.cli.replay_cmds import _exit, replay_audit
from baton.schemas.errors import ReplayFailed
from baton.sinks.audit_batch import AuditBatch, write_batch
from baton.sinks.replay_source import ReplayScope
from tests.unit.test_replay import KEY, _budget_history, _policies
from tests.unit.test_replay_trimmed import DAY, LOOSE, STRICT, _audit, _decided, _later

pytestmark = pytest.mark.unit


def _gate(report) -> int:
    try:
        _exit(report)
    except SystemExit as done:
        return int(done.code or 0)
    except ReplayFailed as failed:
        return failed.exit_code
    raise AssertionError("_exit returned")


@pytest.mark.parametrize("copy", ["link altered", "unchained"])
def test_a_forged_copy_of_a_runs_chain_start_does_not_hide_its_change(
    tmp_path: Path, copy: str
) -> None:
    """Read whole, and from --since (the bound just before the oldest row): the same. The
    copy names another link (its chain hash kept: the row does not hash to it), or none
    (no chain: the run's second row names a link no row read holds, the worker's start
    that the copy replaced; its record is still in decision_variants under that id)."""
    bystander = _decided(_budget_history("b-bystander", 2, 1.0))
    victim = _decided(_later(_budget_history("a-victim", 5, 1.0), 2 * DAY))
    oldest = bystander[0].decided_at
    scopes = [ReplayScope(), ReplayScope(since=oldest - timedelta(seconds=1))]
    client = _audit(tmp_path / "chdb", victim + bystander)
    try:
        for scope in scopes:
            report = replay_audit(client, scope, STRICT, _policies(LOOSE), KEY, 1)
            assert [r.run_id for r in report.changed_runs] == ["a-victim"] and _gate(report) == 1

        forged = orjson.loads(victim[0].to_json())
        if copy == "link altered":
            forged["chain_prev"] = "f" * 64
        else:
            forged["chain_prev"] = forged["chain_hash"] = None
        forged["decided_at"] = (oldest + timedelta(seconds=1)).isoformat()
        batch = AuditBatch("gov.decisions", 20_000)
        batch.add(0, 10_000, orjson.dumps(forged))
        write_batch(client, batch, "chdb")
        for scope in scopes:
            report = replay_audit(client, scope, STRICT, _policies(LOOSE), KEY, 1)
            assert "a-victim" in report.partial, report.partial
            assert report.broken == ["a-victim"], (scope, report.partial, report.broken)
            assert "altered" in report.partial["a-victim"]
            assert _gate(report) == 7
    finally:
        client.close()
