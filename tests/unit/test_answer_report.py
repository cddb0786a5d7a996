"""`baton approve` / `baton deny` exit 6 when their answer did not count: the same approver's
other answer, or the expiry, resolved the approval first (session 39: a deny that lost the
race to a grant said the grant and exited 0)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from baton.cli.people_cmds import _report
from baton.cli.signer import CommandRefused
from baton.schemas.decision import Outcome, Reason
from tests.audit_support import scenario_decisions

pytestmark = pytest.mark.unit


def _decided(outcome: Outcome, reason: Reason):  # type: ignore[no-untyped-def]
    base = scenario_decisions()[0]
    return replace(base, outcome=outcome, reason=reason, approver="alice")


@pytest.mark.parametrize(
    ("verdict", "outcome", "reason", "counted"),
    [
        ("deny", Outcome.STOP, Reason.APPROVAL_DENIED, True),
        ("deny", Outcome.ALLOW, Reason.APPROVAL_GRANTED, False),
        ("deny", Outcome.STOP, Reason.APPROVAL_EXPIRED, False),
        ("grant", Outcome.ALLOW, Reason.APPROVAL_GRANTED, True),
        ("grant", Outcome.STOP, Reason.SHARED_BUDGET_EXCEEDED, True),  # granted, decided again
        ("grant", Outcome.STOP, Reason.APPROVAL_DENIED, False),
        ("grant", Outcome.STOP, Reason.APPROVAL_EXPIRED, False),
    ],
)
def test_an_answer_that_did_not_count_exits_6(
    verdict: str, outcome: Outcome, reason: Reason, counted: bool
) -> None:
    decision = _decided(outcome, reason)
    if counted:
        _report("approval a", verdict, decision, decision, "alice")
    else:
        with pytest.raises(CommandRefused, match=f"resolved before this {verdict}"):
            _report("approval a", verdict, decision, decision, "alice")
