"""Session 11: a forged decision published under the id the worker will use leaves a trace.

Decision ids are derived from the request, so a writer of gov.decisions who reads the
requests publishes a forged ``allow`` (not flagged ``reemitted``) under the id of the
worker's coming decision, before it: a waiting client may take it. ``governance.decisions``
keeps one row per id, and the worker's row replaced the forged one in FINAL and in merges:
the one record that made the client proceed left no row. Migration 0006 keeps every distinct
thing said under an id (``governance.decision_variants``), ``baton audit verify`` fails on
such ids and ``baton trace`` warns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from baton.cli.query_cmds import trace_cmd
from baton.cli.verify_cmds import audit_group
from baton.schemas.decision import Decision, Outcome, Reason
from baton.sinks import audit_conflicts
from baton.sinks.audit_batch import AuditBatch, write_batch
from baton.sinks.audit_conflicts import load_conflicts
from tests.chdb_audit import chdb_audit
from tests.unit.test_attacks_session9_audit import _published
from tests.unit.test_engine_support import handoff

pytestmark = pytest.mark.unit


def _stop_and_forged(run: str = "rs") -> tuple[Decision, Decision]:
    """The worker's stop of a run's first handoff, and a forged allow under its id."""
    (stop,) = _published([handoff("h1", "t1", "planner", "researcher", run_id=run)], run)
    stop.outcome, stop.reason = Outcome.STOP, Reason.HANDOFF_BUDGET_EXCEEDED
    forged = Decision.from_json(stop.to_json())
    forged.outcome, forged.reason, forged.chain_hash = Outcome.ALLOW, Reason.OK, None
    return stop, forged


def _write(client: Any, *records: tuple[int, Decision]) -> None:
    """One sink batch of ``records`` (offset, decision) on partition 0."""
    batch = AuditBatch("gov.decisions", 365)
    for offset, decision in records:
        batch.add(0, offset, decision.to_json())
    write_batch(client, batch, "chdb")


def test_a_forged_allow_before_the_workers_stop_is_kept_and_named(tmp_path: Path) -> None:
    """Forged allow stored first, the worker's stop in a later batch: FINAL shows the stop,
    and nothing showed the allow a client acted on. Now verify fails naming both records
    and trace warns at that step."""
    stop, forged = _stop_and_forged()
    client = chdb_audit(tmp_path / "chdb", [forged])
    _write(client, (1, stop))
    final = client.query("SELECT outcome FROM governance.decisions FINAL").result_rows
    conflicts = load_conflicts(client)
    client.close()
    assert final == [("stop",)]  # the forged row is replaced in the table
    assert conflicts is not None and len(conflicts) == 1
    (conflict,) = conflicts
    assert conflict.decision_id == stop.decision_id
    assert sorted((s[0], s[1], s[4]) for s in conflict.said) == [
        ("allow", "ok", 0),
        ("stop", "handoff_budget_exceeded", 1),
    ]
    assert "different outcomes" in conflict.why
    dsn = ["--dsn", f"chdb://{tmp_path / 'chdb'}"]
    verify = CliRunner().invoke(audit_group, ["verify", *dsn])
    assert verify.exit_code == 1, verify.output
    assert f"CONFLICT decision {stop.decision_id} of run rs: 2 records" in verify.output
    assert "allow/ok at 0@0" in verify.output
    assert "1 decision ids hold records saying different things" in verify.output
    trace = CliRunner().invoke(trace_cmd, ["rs", *dsn])
    assert trace.exit_code == 0, trace.output
    assert "WARNING: step 1: decision" in trace.output
    assert "allow/ok at 0@0" in trace.output


def test_forged_after_the_worker_in_one_block_is_kept(tmp_path: Path) -> None:
    """The worker's stop and, in the same insert block, a forged allow after it (FINAL
    then shows the allow): both records stay, whichever order."""
    stop, forged = _stop_and_forged()
    client = chdb_audit(tmp_path / "chdb", [stop, forged])
    final = client.query("SELECT outcome FROM governance.decisions FINAL").result_rows
    conflicts = load_conflicts(client, run_id="rs")
    client.close()
    assert final == [("allow",)]
    assert conflicts is not None
    assert [sorted(s[0] for s in c.said) for c in conflicts] == [["allow", "stop"]]


def test_the_workers_own_records_under_one_id_are_no_conflict(tmp_path: Path) -> None:
    """A record read twice (redelivery, a sink restarted before its commit) in two blocks
    and twice in one: one variant; verify passes."""
    (stop,) = _published([handoff("h1", "t1", "planner", "researcher", run_id="rs")], "rs")
    client = chdb_audit(tmp_path / "chdb", [stop, stop])
    _write(client, (0, stop), (1, stop))
    conflicts = load_conflicts(client)
    client.close()
    assert conflicts == []
    verify = CliRunner().invoke(audit_group, ["verify", "--dsn", f"chdb://{tmp_path / 'chdb'}"])
    assert verify.exit_code == 0, verify.output


def test_a_flood_of_forged_ids_is_read_bounded_and_huge_fields_are_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many conflicting ids: a verify reads at most MAX_CONFLICTS of them and says 'at
    least'; a forged 60 KB reason is kept in the audit and shown cut."""
    monkeypatch.setattr(audit_conflicts, "MAX_CONFLICTS", 3)
    runs = [f"r{i}" for i in range(5)]
    pairs = [_stop_and_forged(run) for run in runs]
    for _, forged in pairs:
        forged.reason = "x" * 60_000
    client = chdb_audit(tmp_path / "chdb", [f for _, f in pairs] + [s for s, _ in pairs])
    conflicts = load_conflicts(client)
    client.close()
    assert conflicts is not None and len(conflicts) == 3
    assert any(len(s[1]) == 60_000 for s in conflicts[0].said)  # kept whole
    verify = CliRunner().invoke(audit_group, ["verify", "--dsn", f"chdb://{tmp_path / 'chdb'}"])
    assert verify.exit_code == 1
    assert "at least 3 decision ids" in verify.output
    assert max(map(len, verify.output.splitlines())) < 1_000


def test_an_audit_before_0006_is_said_unchecked_not_passed(tmp_path: Path) -> None:
    """An audit no sink of this version migrated: verify says the ids were not checked."""
    stop, _ = _stop_and_forged()
    client = chdb_audit(tmp_path / "chdb", [stop])
    client.command("DROP VIEW governance.decision_conflicts")
    assert load_conflicts(client) is None
    client.close()
    verify = CliRunner().invoke(audit_group, ["verify", "--dsn", f"chdb://{tmp_path / 'chdb'}"])
    assert "ids not checked" in verify.output


def test_two_forged_records_under_a_300_kb_id_are_named_in_a_short_line(tmp_path: Path) -> None:
    """Ids are any text on gov.decisions: two records under one 300 KB id saying different
    things are a conflict like any other, and verify's line about them stays short."""
    stop, forged = _stop_and_forged()
    stop.decision_id = forged.decision_id = "i" * 300_000
    client = chdb_audit(tmp_path / "chdb", [stop, forged])
    conflicts = load_conflicts(client)
    client.close()
    assert conflicts is not None and [len(c.decision_id) for c in conflicts] == [300_000]
    verify = CliRunner().invoke(audit_group, ["verify", "--dsn", f"chdb://{tmp_path / 'chdb'}"])
    assert verify.exit_code == 1
    (line,) = [x for x in verify.output.splitlines() if x.startswith("CONFLICT")]
    assert len(line) < 1_000, line[:200]


def test_a_decision_decided_again_the_same_way_is_counted_not_failed(tmp_path: Path) -> None:
    """A worker that died before writing its state: its successor decides the same request
    again (the same id, outcome and reason; another decided_at, so another chain hash). Not a
    conflict verify fails on: it counts it; trace shows no warning."""
    from datetime import timedelta

    from baton.schemas.decision import CHAIN_FIELDS, chain_hash

    (first,) = _published([handoff("h1", "t1", "planner", "researcher", run_id="rs")], "rs")
    again = Decision.from_json(first.to_json())
    assert first.decided_at is not None
    again.decided_at = first.decided_at + timedelta(seconds=8)
    values = [getattr(again, f) for f in CHAIN_FIELDS]
    again.chain_hash = chain_hash(b"", again.chain_prev or "", values)
    assert again.chain_hash != first.chain_hash
    client = chdb_audit(tmp_path / "chdb", [first, again])
    conflicts = load_conflicts(client)
    client.close()
    assert conflicts is not None and [c.differs for c in conflicts] == [False]
    dsn = ["--dsn", f"chdb://{tmp_path / 'chdb'}"]
    verify = CliRunner().invoke(audit_group, ["verify", *dsn])
    assert verify.exit_code == 0, verify.output
    assert "1 decision ids decided again with the same outcome and reason" in verify.output
    assert "CONFLICT" not in verify.output
    trace = CliRunner().invoke(trace_cmd, ["rs", *dsn])
    assert "WARNING" not in trace.output, trace.output
