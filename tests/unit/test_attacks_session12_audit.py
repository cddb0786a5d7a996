"""Session 12 (H4): a forged allow the audit keeps outside every chain, and verify passes.

A writer of gov.decisions publishes an ``allow`` under a run's awaited request id and phase
with the client's request as its input and no ``chain_hash``, under a decision id the worker
never uses or another tenant. The SDK took it until 90af265 (an SDK of an older version, or
any other reader of gov.decisions, still does); the audit stores it as a row of its own (no
other record under its tenant and id: ``decision_conflicts`` is empty), and `baton audit
verify` skips every row without a chain hash: "every chain holds", exit 0. A worker publishes
no unchained allow (tests/unit/test_attacks_session12_sdk.py holds that), so a run's
unchained allow is a forged row: verify now names it (``unchained``, sinks/chain_verify.py)
and fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.verify_cmds import audit_group
from baton.schemas.decision import Decision, Outcome, Reason
from tests.chdb_audit import chdb_audit
from tests.unit.test_attacks_session9_audit import _published
from tests.unit.test_engine_support import handoff

pytestmark = pytest.mark.unit


def _gated_run() -> list[Decision]:
    """The worker's decisions of a run: an allow, an approval asked, an allow."""
    events = [
        handoff("h0", "t0", "planner", "researcher", run_id="rs"),
        handoff(
            "h1", "t1", "planner", "billing_agent", run_id="rs", action="billing.refund.create"
        ),
        handoff("h2", "t2", "planner", "researcher", run_id="rs"),
    ]
    return _published(events, "rs")


@pytest.mark.parametrize(
    "forgery", [{"decision_id": "f" * 32}, {"tenant": "other"}], ids=["unused-id", "other-tenant"]
)
def test_a_forged_unchained_allow_in_a_chained_run_fails_verify(
    tmp_path: Path, forgery: dict[str, str]
) -> None:
    worker = _gated_run()
    gate = worker[1]
    assert gate.outcome == Outcome.APPROVAL_REQUIRED
    forged = Decision.from_json(gate.to_json())
    forged.outcome, forged.reason, forged.approval_id, forged.chain_hash = (
        Outcome.ALLOW, Reason.OK, None, None,
    )  # fmt: skip
    for name, value in forgery.items():
        setattr(forged, name, value)
    chdb_audit(tmp_path / "chdb", [worker[0], forged, *worker[1:]]).close()

    verify = CliRunner().invoke(audit_group, ["verify", "--dsn", f"chdb://{tmp_path / 'chdb'}"])

    assert verify.exit_code == 1, verify.output
    assert "every chain holds" not in verify.output


def test_the_workers_own_run_verifies(tmp_path: Path) -> None:
    chdb_audit(tmp_path / "chdb", _gated_run()).close()
    verify = CliRunner().invoke(audit_group, ["verify", "--dsn", f"chdb://{tmp_path / 'chdb'}"])
    assert verify.exit_code == 0, verify.output
    assert "every chain holds" in verify.output


def test_trace_warns_at_a_forged_unchained_allow(tmp_path: Path) -> None:
    """H4's F3b: after verify failed the run, `baton trace` still showed the forged allow as
    the run's own step with no warning (it walks only rows with a chain_hash)."""
    from baton.cli.query_cmds import trace_cmd

    worker = _gated_run()
    forged = Decision.from_json(worker[1].to_json())
    forged.outcome, forged.reason, forged.approval_id, forged.chain_hash = (
        Outcome.ALLOW, Reason.OK, None, None,
    )  # fmt: skip
    forged.decision_id = "f" * 32
    chdb_audit(tmp_path / "chdb", [worker[0], forged, *worker[1:]]).close()
    trace = CliRunner().invoke(trace_cmd, ["rs", "--dsn", f"chdb://{tmp_path / 'chdb'}"])
    assert trace.exit_code == 0, trace.output
    assert "WARNING: step 2: allow without a chain_hash: no worker publishes one" in trace.output
    assert trace.output.count("WARNING") == 1  # the worker's own steps are not named
