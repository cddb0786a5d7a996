"""Session 17 (H3, F5): what `baton approvals` shows of a request an approver grants.

The gate matches a request's ``action``, ``tool`` and every name in its ``tools``, and a grant
covers each of them that the gate matches (``approvals.remember_grant``). The listing showed
the action (or the tool) only: a handoff asking ``action: docs.read`` with
``tools: [billing.refund.create]`` was listed as ``docs.read``, and the approver's grant of
it covered the refund; one naming an action and a tool was listed by its action. Now the
listing names the tool beside the action, and the declared tools.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.people_cmds import approvals_cmd
from baton.processors.batch import BatchProcessor, InputRecord
from baton.schemas.decision import Outcome
from tests.chdb_audit import chdb_audit
from tests.unit.test_attacks_session17_h3_sdk import APPROVALS, POLICY, REFUND, REQUESTS
from tests.unit.test_engine_support import handoff

pytestmark = pytest.mark.unit


def _audit_of_one_asked_handoff(tmp_path: Path, **fields: object) -> list[str]:
    """A worker's approval_required decision of a handoff of action docs.read with
    ``fields``, stored in a chDB audit; the ``--dsn`` arguments that read it."""
    now = datetime.now(UTC)
    proc = BatchProcessor(POLICY, 1, {}, worker="w", approvals_topic=APPROVALS)
    asked = handoff(
        "h1", "t1", "planner", "billing_agent", run_id="run-9", action="docs.read", **fields
    ).model_copy(update={"event_time": now})
    out = proc.process([InputRecord(REQUESTS, 0, 0, b"run-9", asked.to_json())], now)
    decisions = [d for _, d in out.decisions if not d.reemitted]
    assert [d.outcome for d in decisions] == [Outcome.APPROVAL_REQUIRED]
    chdb_audit(tmp_path / "chdb", decisions).close()
    return ["--dsn", f"chdb://{tmp_path / 'chdb'}"]


def test_the_listing_names_the_gated_tool_a_request_declares(tmp_path: Path) -> None:
    dsn = _audit_of_one_asked_handoff(tmp_path, tools=[REFUND])
    listed = CliRunner().invoke(approvals_cmd, [*dsn, "-f", "json"])
    assert listed.exit_code == 0, listed.output
    row = json.loads(listed.output)
    assert (row["action"], row["tools"]) == ("docs.read", [REFUND])
    table = CliRunner().invoke(approvals_cmd, dsn)
    assert REFUND in table.output


def test_the_listing_names_a_gated_tool_beside_an_action(tmp_path: Path) -> None:
    """The same with ``tool``: a request naming an action and a tool was listed by its
    action alone."""
    dsn = _audit_of_one_asked_handoff(tmp_path, tool=REFUND)
    for fmt in ("json", "csv", "table"):
        listed = CliRunner().invoke(approvals_cmd, [*dsn, "-f", fmt])
        assert listed.exit_code == 0, listed.output
        assert REFUND in listed.output, fmt
