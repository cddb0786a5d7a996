"""Session 17 (H3): a forged record dated at the retention's edge, on a real chDB audit.

The sink takes a ``decided_at`` from ``audit_ttl_days`` before its clock to a day after it
(``rows.DecidedWindow``): a writer of gov.decisions picks one a few seconds inside it. The
audit's tables expired rows on ``decided_at``, so such a record expired seconds after it was
stored, and took with it:

* F1: the ``decision_variants`` row that names it: a forged ``allow`` a client acted on (the
  attack migration 0006 keeps a trace of) left no conflict, and ``baton audit verify`` passed;
* F2: the worker's own row, when the forged record is a copy of it in the same month:
  ReplacingMergeTree keeps the last row inserted under a key, so a merge replaced the worker's
  row with the copy, and the copy's TTL then deleted it (verify: every chain holds).

Retention now counts from ``inserted_at``, the sink's clock, which no writer of a topic sets.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from baton.cli.verify_cmds import audit_group
from baton.processors.batch import BatchProcessor, InputRecord
from baton.schemas.decision import Decision, Outcome, Reason
from baton.sinks.audit_batch import AuditBatch, write_batch
from baton.sinks.audit_conflicts import load_conflicts
from baton.sinks.clickhouse import connect
from baton.sinks.schema import migrate
from tests.unit.test_attacks_session11_audit import _stop_and_forged
from tests.unit.test_engine_support import handoff, seed_policy

pytestmark = pytest.mark.unit


def _audit(path: Path, ttl_days: int) -> Any:
    client = connect(f"chdb://{path}", create=True)
    migrate(client, ttl_days)
    return client


def _store(client: Any, ttl_days: int, offset: int, decision: Decision, clock: Any = None) -> None:
    """One sink batch holding ``decision`` (read at ``offset``), its window on ``clock``."""
    batch = AuditBatch("gov.decisions", ttl_days, clock or (lambda: datetime.now(UTC)))
    batch.add(0, offset, decision.to_json())
    assert not batch.rejected, batch.rejected  # inside the sink's window: stored
    write_batch(client, batch, "chdb")


def _verify(path: Path, ttl_days: int) -> Any:
    env = {"BATON_AUDIT_TTL_DAYS": str(ttl_days), "BATON_AUDIT_CHAIN_KEY": None}  # (unset: no key)
    return CliRunner().invoke(audit_group, ["verify", "--dsn", f"chdb://{path}"], env=env)


def test_a_forged_allow_dated_at_the_retentions_edge_keeps_its_conflict(tmp_path: Path) -> None:
    """F1: the forged allow is stored by a sink whose clock read a day ago (its window then
    took it) and is past its ``decided_at`` TTL now: the conflict it makes is still named."""
    ttl = 30
    stop, forged = _stop_and_forged()
    now = datetime.now(UTC)
    stop.decided_at = now
    forged.decided_at = now - timedelta(days=ttl, hours=12)
    client = _audit(tmp_path / "chdb", ttl)
    _store(client, ttl, 0, forged, clock=lambda: now - timedelta(days=1))
    _store(client, ttl, 1, stop)
    for table in ("decisions", "decision_variants"):  # merges apply the TTL
        client.command(f"OPTIMIZE TABLE governance.{table} FINAL")
    conflicts = load_conflicts(client)
    client.close()
    assert conflicts is not None
    assert [sorted(s[0] for s in c.said) for c in conflicts] == [["allow", "stop"]]
    verify = _verify(tmp_path / "chdb", ttl)
    assert verify.exit_code == 1, verify.output
    assert f"CONFLICT decision {stop.decision_id}" in verify.output


def _month_middle_ttl(now: datetime) -> int:
    """A retention (days) whose edge falls mid-month, so the rows below share a partition."""
    ttl = 40
    while not 5 <= (now - timedelta(days=ttl)).day <= 20:
        ttl += 1
    return ttl


def test_a_forged_copy_in_the_same_month_never_erases_the_workers_row(tmp_path: Path) -> None:
    """F2: the worker's allow, decided a minute inside the retention, and a forged copy of it
    dated at the retention's edge (3 s in), stored after it: a merge, the copy's expiry,
    another merge. The worker's row was gone and verify passed; now the copy stays in the
    audit as what it is (it does not hash: altered) and verify fails."""
    now = datetime.now(UTC)
    ttl = _month_middle_ttl(now)
    client = _audit(tmp_path / "chdb", ttl)
    edge = datetime.now(UTC) - timedelta(days=ttl)
    proc = BatchProcessor(seed_policy(), 1, {}, worker="w", approvals_topic="gov.approvals")
    ask = handoff("h1", "t1", "planner", "researcher", run_id="rs")
    ask = ask.model_copy(update={"event_time": edge + timedelta(minutes=1)})
    out = proc.process(
        [InputRecord("gov.handoff.requests", 0, 0, b"rs", ask.to_json())],
        edge + timedelta(minutes=1),
    )
    (real,) = [d for _, d in out.decisions if not d.reemitted]
    forged = Decision.from_json(real.to_json())
    forged.decided_at = edge + timedelta(seconds=3)
    _store(client, ttl, 0, real)
    _store(client, ttl, 1, forged)
    client.command("OPTIMIZE TABLE governance.decisions FINAL")  # the copy replaces the row
    time.sleep(
        max(0.0, (forged.decided_at + timedelta(days=ttl) - datetime.now(UTC)).total_seconds()) + 1
    )
    client.command("OPTIMIZE TABLE governance.decisions FINAL")  # the copy's TTL
    rows = client.query("SELECT decision_id FROM governance.decisions FINAL").result_rows
    client.close()
    assert rows == [(real.decision_id,)]
    verify = _verify(tmp_path / "chdb", ttl)
    assert verify.exit_code == 1, verify.output
    assert "altered" in verify.output


def test_an_unchained_row_dated_at_the_edge_does_not_excuse_a_runs_deleted_first_row(
    tmp_path: Path,
) -> None:
    """F6: runs whose oldest row is within a day of the retention horizon are verified as
    partial (their first link may name a row retention removed). The oldest of *any* row was
    taken, also of an unchained stop, which any writer of gov.decisions may add (verify
    passes it: a worker publishes refusals outside the chain). So a run's first row deleted
    from the table (by a writer of the audit) and such a stop dated at the retention's edge
    passed verify: a deletion at a run's start unseen. Only chained rows date a run now."""
    ttl = 30
    now = datetime.now(UTC)
    proc = BatchProcessor(seed_policy(), 1, {}, worker="w", approvals_topic="gov.approvals")
    run: list[Decision] = []
    for i, (task, to) in enumerate([("t1", "researcher"), ("t2", "writer")]):
        ask = handoff(f"h{i}", task, "planner", to, run_id="rs").model_copy(
            update={"event_time": now}
        )
        out = proc.process([InputRecord("gov.handoff.requests", 0, i, b"rs", ask.to_json())], now)
        run += [d for _, d in out.decisions if not d.reemitted]
    assert [d.chain_prev == "" for d in run] == [True, False]
    client = _audit(tmp_path / "chdb", ttl)
    for offset, decision in enumerate(run):
        _store(client, ttl, offset, decision)
    client.command(
        "ALTER TABLE governance.decisions DELETE WHERE decision_id = {d:String}",
        parameters={"d": run[0].decision_id},
        settings={"mutations_sync": 2},
    )
    cut = _verify(tmp_path / "chdb", ttl)
    assert cut.exit_code == 1 and "missing" in cut.output, cut.output
    stop = Decision.from_json(run[1].to_json())
    stop.decision_id, stop.request_id = "forged-stop", "forged"
    stop.outcome, stop.reason, stop.chain_prev, stop.chain_hash = (
        Outcome.STOP,
        Reason.HANDOFF_BUDGET_EXCEEDED,
        None,
        None,
    )
    stop.decided_at = now - timedelta(days=ttl) + timedelta(hours=1)
    _store(client, ttl, 2, stop)
    client.close()
    verify = _verify(tmp_path / "chdb", ttl)
    assert verify.exit_code == 1, verify.output
    assert "missing" in verify.output
