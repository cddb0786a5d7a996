"""`baton approvals` and `baton approve` against approval_required rows that someone who can
write gov.decisions put into the audit under a pending approval's id: the listing names them
and leaves them out, an answer signs the worker's row (a forged copy put ahead of it made the
real approval impossible to answer), and rows that hold together but name different requests
are refused."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from baton.cli.approvals_audit import find_approval
from baton.cli.main import _register, cli
from baton.processors.engine import request_digest
from baton.schemas.decision import Decision, Outcome
from baton.schemas.errors import BatonError
from baton.schemas.events import HandoffRequested
from tests.chdb_audit import chdb_audit
from tests.unit.test_engine_support import handoff
from tests.unit.test_run_lives import _decided

pytestmark = pytest.mark.unit


def _asked_now() -> Decision:
    """The worker's approval_required row for a refund, asked a minute ago (still pending)."""
    start = datetime.now(UTC) - timedelta(seconds=60)
    refund = handoff("h1", "t1", "planner", "billing_agent", action="billing.refund.create")
    (asked,) = _decided([(refund, 0, False)], lambda s: start + timedelta(seconds=s))
    assert asked.outcome is Outcome.APPROVAL_REQUIRED and asked.approval_id
    return asked


def _shows_another(asked: Decision) -> Decision:
    """A copy under the same approval id and digest showing a harmless handoff, a second
    ahead of the worker's row (it does not hold together: its shown fields are not its
    recorded request's)."""
    assert asked.decided_at is not None
    return dataclasses.replace(
        asked,
        decision_id="f" * 32,
        to_agent="researcher",
        action=None,
        task_id="summary",
        decided_at=asked.decided_at - timedelta(seconds=1),
    )


def _holds_another(asked: Decision) -> Decision:
    """A copy that holds together, for another request: its input, digest and shown fields
    are a harmless handoff's, under the pending approval's id."""
    assert asked.decided_at is not None and asked.input is not None
    doc = orjson.loads(asked.input)
    doc.update(to_agent="researcher", action="docs.read", task_id="summary")
    other = HandoffRequested.model_validate(doc)
    return dataclasses.replace(
        asked,
        decision_id="e" * 32,
        to_agent=other.to_agent,
        action=other.action,
        task_id=other.task_id,
        input=orjson.dumps(doc).decode(),
        request_digest=request_digest(other),
        decided_at=asked.decided_at - timedelta(seconds=1),
    )


def test_an_answer_signs_the_workers_row_not_a_copy_put_ahead_of_it(tmp_path: Path) -> None:
    asked = _asked_now()
    client = chdb_audit(tmp_path / "chdb", [asked, _shows_another(asked)])
    try:
        found, answered = find_approval(client, asked.approval_id or "")
    finally:
        client.close()
    assert answered is None
    assert found is not None and found.decision_id == asked.decision_id


def test_rows_that_hold_together_for_different_requests_are_never_signed(tmp_path: Path) -> None:
    asked = _asked_now()
    client = chdb_audit(tmp_path / "chdb", [asked, _holds_another(asked)])
    try:
        with pytest.raises(BatonError, match="naming different requests"):
            find_approval(client, asked.approval_id or "")
    finally:
        client.close()


def test_the_listing_leaves_out_a_row_that_does_not_hold_together_and_names_it(
    tmp_path: Path,
) -> None:
    asked = _asked_now()
    chdb = tmp_path / "chdb"
    chdb_audit(chdb, [asked, _shows_another(asked)]).close()
    _register()
    result = CliRunner().invoke(cli, ["approvals", "-f", "json", "--dsn", f"chdb://{chdb}"])
    assert result.exit_code == 0, result.output
    listed = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [(row["approval_id"], row["to_agent"]) for row in listed] == [
        (asked.approval_id, "billing_agent")
    ]
    assert f"approval {asked.approval_id} (run {asked.run_id}) not listed" in result.stderr
    assert "does not hold together (it shows to_agent 'researcher'" in result.stderr
