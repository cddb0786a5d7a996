"""The approval flow: required -> granted -> allow, expiry by TTL, denial, refused approvers."""

from __future__ import annotations

import pytest

from baton.processors.engine import approval_id_for, expire_approvals
from baton.schemas.decision import Fallback, Outcome, Phase, Reason
from tests.unit.test_engine_support import Run, at, handoff, policy_with

pytestmark = pytest.mark.unit

REFUND = "billing.refund.create"  # in the seed's require_approval_for


def _refund_requested(run: Run, t: float = 0, request_id: str = "req-refund") -> str:
    """planner asks to hand refund_create to billing_agent; returns the approval id."""
    d = run.handoff(
        "refund_create", "planner", "billing_agent", action=REFUND, request_id=request_id, t=t
    )
    assert d.outcome == Outcome.APPROVAL_REQUIRED, d
    assert d.approval_id is not None
    return d.approval_id


def test_refund_action_requires_approval_with_an_id_and_expiry() -> None:
    run = Run()
    d = run.handoff(
        "refund_create", "planner", "billing_agent", action=REFUND, request_id="req-refund", t=10
    )

    assert d.outcome == Outcome.APPROVAL_REQUIRED
    assert d.reason == Reason.APPROVAL_PENDING
    assert d.phase == Phase.PRE_HANDOFF
    assert d.approval_id == approval_id_for(run.last)
    assert d.approval_expires_at == at(10 + 900)  # approval.ttl_seconds default
    assert d.fallback is None
    # nothing is granted yet: no handoff counted, no lock on the task
    assert d.handoff_count == 0
    assert run.state is not None and run.state.task("refund_create") is None


def test_approval_glob_matches_tools_as_well_as_actions() -> None:
    run = Run(policy_with(require_approval_for=["billing.*", "shell.exec"]))
    assert (
        run.handoff("t1", "planner", "ops", tool="shell.exec").outcome == Outcome.APPROVAL_REQUIRED
    )
    assert run.handoff("t2", "planner", "ops", action="billing.invoice.read").outcome == (
        Outcome.APPROVAL_REQUIRED
    )
    assert run.handoff("t3", "planner", "ops", action="search.web").outcome == Outcome.ALLOW


def test_granted_approval_allows_the_handoff_in_the_approval_phase() -> None:
    run = Run()
    approval_id = _refund_requested(run)

    [d] = run.grant(approval_id, "finance_lead", t=60)

    assert d.phase == Phase.APPROVAL
    assert d.outcome == Outcome.ALLOW
    assert d.reason == Reason.APPROVAL_GRANTED
    assert d.approver == "finance_lead"
    assert d.approval_id == approval_id
    assert d.request_id == "req-refund"
    assert d.owner == "billing_agent" and d.handoff_count == 1
    assert run.state is not None
    assert run.state.task("refund_create").owner == "billing_agent"
    assert not run.state.pending


def test_approval_expires_after_its_ttl_on_the_timer_sweep() -> None:
    run = Run(policy_with(approval={"ttl_seconds": 300}))
    approval_id = _refund_requested(run, t=0)
    assert run.state is not None

    state, nothing = expire_approvals(run.state, run.policy, at(299.9))
    assert nothing == [] and state is run.state

    state, [d] = expire_approvals(run.state, run.policy, at(300))

    assert d.phase == Phase.APPROVAL
    assert d.outcome == Outcome.STOP
    assert d.reason == Reason.APPROVAL_EXPIRED
    assert d.approval_id == approval_id
    assert d.fallback == Fallback.SINGLE_AGENT
    assert not state.pending
    assert run.state.pending, "the sweep must not modify its input state"


def test_approval_expires_lazily_on_the_next_event_of_the_run() -> None:
    run = Run(policy_with(approval={"ttl_seconds": 300}))
    approval_id = _refund_requested(run, t=0)

    expired, other = run.send(handoff("req-other", "lookup", "planner", "search_agent", t=301), 301)

    assert (expired.reason, expired.approval_id) == (Reason.APPROVAL_EXPIRED, approval_id)
    assert expired.outcome == Outcome.STOP
    assert other.request_id == "req-other" and other.outcome == Outcome.ALLOW
    assert run.state is not None and not run.state.pending


def test_grant_after_expiry_is_stopped_as_approval_expired() -> None:
    run = Run(policy_with(approval={"ttl_seconds": 300}))
    approval_id = _refund_requested(run, t=0)

    [d] = run.grant(approval_id, "finance_lead", t=300)

    assert d.outcome == Outcome.STOP and d.reason == Reason.APPROVAL_EXPIRED
    assert run.state is not None and run.state.handoff_count == 0
    assert run.state.task("refund_create") is None


def test_grant_after_the_sweep_expired_it_gets_the_expiry_not_an_allow() -> None:
    run = Run(policy_with(approval={"ttl_seconds": 300}))
    approval_id = _refund_requested(run, t=0)
    assert run.state is not None
    run.state, [swept] = expire_approvals(run.state, run.policy, at(400))

    [d] = run.grant(approval_id, "finance_lead", t=401)

    assert d.decision_id == swept.decision_id
    assert d.outcome == Outcome.STOP and d.reason == Reason.APPROVAL_EXPIRED
    assert run.state.handoff_count == 0


def test_denied_approval_stops_the_handoff_but_not_the_run() -> None:
    run = Run()
    approval_id = _refund_requested(run)

    [d] = run.deny(approval_id, "finance_lead", t=30)

    assert d.phase == Phase.APPROVAL
    assert d.outcome == Outcome.STOP
    assert d.reason == Reason.APPROVAL_DENIED
    assert d.approver == "finance_lead"
    assert d.fallback == Fallback.SINGLE_AGENT
    assert run.state is not None and not run.state.pending
    assert run.state.handoff_count == 0
    assert run.handoff("lookup", "planner", "search_agent").outcome == Outcome.ALLOW


def test_grant_after_denial_does_not_allow_the_handoff() -> None:
    run = Run()
    approval_id = _refund_requested(run)
    [denial] = run.deny(approval_id, "finance_lead")

    [d] = run.grant(approval_id, "cfo", t=5)

    assert d.decision_id == denial.decision_id and d.reason == Reason.APPROVAL_DENIED
    assert run.state is not None and run.state.handoff_count == 0


def test_requesting_agent_cannot_approve_its_own_handoff_and_approval_stays_pending() -> None:
    run = Run()
    approval_id = _refund_requested(run)  # requested by planner

    [refused] = run.grant(approval_id, "planner", t=5)

    assert refused.phase == Phase.APPROVAL
    assert refused.outcome == Outcome.RECORDED
    assert refused.reason == Reason.SELF_APPROVAL
    assert refused.approver == "planner"
    assert run.state is not None and approval_id in run.state.pending
    assert run.state.handoff_count == 0

    [real] = run.grant(approval_id, "finance_lead", t=10)
    assert real.outcome == Outcome.ALLOW and real.reason == Reason.APPROVAL_GRANTED


def test_self_approval_is_accepted_when_the_policy_allows_it() -> None:
    run = Run(policy_with(approval={"allow_self_approval": True}))
    approval_id = _refund_requested(run)
    [d] = run.grant(approval_id, "planner")
    assert d.outcome == Outcome.ALLOW


def test_approver_outside_the_approvers_list_is_refused() -> None:
    run = Run(policy_with(approval={"approvers": ["finance_*"]}))
    approval_id = _refund_requested(run)

    [refused] = run.grant(approval_id, "intern", t=5)

    assert refused.outcome == Outcome.RECORDED
    assert refused.reason == Reason.APPROVER_NOT_PERMITTED
    assert run.state is not None and approval_id in run.state.pending

    [d] = run.grant(approval_id, "finance_lead", t=6)
    assert d.outcome == Outcome.ALLOW and d.approver == "finance_lead"


def test_redelivered_refused_grant_is_answered_from_the_record_and_changes_nothing() -> None:
    run = Run()
    approval_id = _refund_requested(run)
    [refused] = run.grant(approval_id, "planner", t=5)
    [allowed] = run.grant(approval_id, "finance_lead", t=6)
    state = run.state
    assert state is not None

    # the refused grant again (same bytes, so same event_time), after the real grant
    replay = run.grant(approval_id, "planner", t=5)

    assert replay == [refused]
    assert run.state is state
    assert allowed.outcome == Outcome.ALLOW


def test_grant_for_an_unknown_approval_is_recorded_and_allows_nothing() -> None:
    run = Run()
    run.handoff("lookup", "planner", "search_agent")
    [d] = run.grant("apr_doesnotexist", "finance_lead")
    assert d.outcome == Outcome.RECORDED and d.reason == Reason.UNKNOWN_APPROVAL
    assert run.state is not None and run.state.handoff_count == 1


def test_grant_rechecks_the_limits_that_changed_while_it_was_pending() -> None:
    run = Run()
    approval_id = _refund_requested(run)
    # meanwhile another agent takes the task
    assert run.handoff("refund_create", "planner", "support_agent").outcome == Outcome.ALLOW

    [d] = run.grant(approval_id, "finance_lead")

    assert d.phase == Phase.APPROVAL
    assert d.outcome == Outcome.STOP and d.reason == Reason.OWNERSHIP_CONFLICT
    assert d.owner == "support_agent"
