"""Session 17 (H3): the approver's SDK signs what it was not shown (F4).

``ApproverClient.grant/deny`` refused an ``approval_required`` decision that does not hold
together (``approvals.request_problem``) only "when it carries its input": a writer of
gov.decisions left the input out of a forged decision that shows a harmless handoff and
carries the approval id, run and request digest of the refund it wants approved. The
approver's program showed the harmless handoff, the client signed the refund's digest, and
the worker granted the refund. ``baton approve`` refuses the same row (its check has no
condition); every worker publishes an ``approval_required`` decision with its input.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.schemas.decision import Decision, Outcome, Reason
from baton.schemas.policy import parse_policy
from baton.schemas.signing import new_private_key, public_key_text
from baton.streams.sdk import ApproverClient
from tests.unit.test_engine_support import handoff

pytestmark = pytest.mark.unit

REFUND = "billing.refund.create"
FINANCE = new_private_key()
POLICY = parse_policy(
    f"""
multi_agent:
  require_approval_for: [{REFUND}]
  approval:
    keys:
      finance_lead: "{public_key_text(FINANCE)}"
""",
    "test",
)
REQUESTS, APPROVALS = "gov.handoff.requests", "gov.approvals"


def _approver(sent: list[bytes]) -> ApproverClient:
    """An approver client signing as finance_lead whose channel keeps what it would send."""
    client = ApproverClient("127.0.0.1:1", key=FINANCE, timeout=3)
    channel = client.channel
    channel.connect = lambda: None  # type: ignore[method-assign]
    channel.flush = lambda timeout: 0  # type: ignore[method-assign]

    def submit(_topic: str, _key: bytes, value: bytes, **_: Any) -> None:
        sent.append(value)

    channel.submit = submit  # type: ignore[method-assign]
    return client


def _refund_asked(now: datetime) -> tuple[BatchProcessor, Decision]:
    """A worker that asked for an approval of a refund, and its approval_required record."""
    proc = BatchProcessor(POLICY, 1, {}, worker="w", approvals_topic=APPROVALS)
    refund = handoff("h1", "refund", "planner", "billing_agent", run_id="run-9", action=REFUND)
    refund = refund.model_copy(update={"event_time": now})
    out = proc.process([InputRecord(REQUESTS, 0, 0, b"run-9", refund.to_json())], now)
    (asked,) = [d for _, d in out.decisions if not d.reemitted]
    assert asked.outcome == Outcome.APPROVAL_REQUIRED
    assert asked.input is not None  # the worker publishes it with its input
    return proc, asked


def test_a_forged_approval_request_without_its_input_is_not_signed() -> None:
    """Before the fix the client signed the refund's approval id, run and digest, and the
    worker, handed that grant, answered ``allow approval_granted`` for the refund."""
    now = datetime.now(UTC)
    _proc, asked = _refund_asked(now)
    shown = dataclasses.replace(asked, to_agent="researcher", action="docs.read", input=None)
    sent: list[bytes] = []
    for answer in (_approver(sent).grant, _approver(sent).deny):
        with pytest.raises(ValueError, match=r"does not hold together.*no recorded request"):
            answer(shown, approver="finance_lead", comment="no")
    assert sent == []


def test_the_workers_own_approval_request_is_still_signed_and_granted() -> None:
    now = datetime.now(UTC)
    proc, asked = _refund_asked(now)
    sent: list[bytes] = []
    _approver(sent).grant(asked, approver="finance_lead")
    (raw,) = sent
    out = proc.process([InputRecord(APPROVALS, 0, 0, b"run-9", raw)], now + timedelta(seconds=1))
    reasons = [d.reason for _, d in out.decisions if not d.reemitted]
    assert reasons == [Reason.APPROVAL_GRANTED]
