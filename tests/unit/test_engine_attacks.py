"""The issue-14 rules under attack: forged and careless reports, races and name games.

Each test is one attack. Those marked xfail(strict=True) are open findings of the attack
review (H12): the engine still fails open there; the reason names what it should do. The
others pin what was tried and held.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from baton.schemas.decision import Outcome, Reason
from baton.schemas.policy import parse_policy
from tests.unit.test_engine_support import Run, completed, policy_with

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- reservations


def test_a_report_naming_another_tasks_request_does_not_free_its_reservation() -> None:
    run = Run(policy_with(max_agents_per_run=None, shared_max_usd=10))
    run.handoff("T", "planner", "A", estimated_usd=4)
    b = run.handoff("U", "planner", "B", estimated_usd=4, t=1)
    # A (careless or hostile) reports under B's request id, for its own task, at no cost
    run.one(completed(b.request_id, "T", "A", status="error", t=2))
    assert run.state is not None and run.state.reserved_usd == pytest.approx(8)
    # 0 spent + 8 reserved + 5 > 10: must stop (it was allowed: 4 + 5 <= 10)
    third = run.handoff("V", "planner", "C", estimated_usd=5, t=3)
    assert (third.outcome, third.reason) == (Outcome.STOP, Reason.SHARED_BUDGET_EXCEEDED)


def test_a_completion_at_its_reservations_expiry_counts_its_cost_once() -> None:
    run = Run(policy_with(reservation_ttl_seconds=10, shared_max_usd=10, max_handoffs=None))
    allowed = run.handoff("t1", "a", "b", estimated_usd=8)
    report = completed(allowed.request_id, "t1", "b", cost_usd=7, t=10)
    decisions = run.send(report, t=10)  # the expiry and the report in one call
    assert [d.reason for d in decisions] == [Reason.RESERVATION_EXPIRED, Reason.WITHIN_BUDGET]
    run.send(report, t=11)  # redelivered
    assert run.state is not None
    assert (run.state.spent_usd, run.state.reserved_usd) == (7, 0)


# ---------------------------------------------------------------- approvals and tools


def test_require_approval_true_gates_a_handoff_that_names_no_action() -> None:
    run = Run(parse_policy("writes: {require_approval: true}"))
    asked = run.handoff("t1", "planner", "writer")
    assert asked.outcome == Outcome.APPROVAL_REQUIRED


@pytest.mark.xfail(
    strict=True,
    reason="a completion reporting a tool that require_approval_for matches, on a handoff "
    "that never asked for (or got) an approval, is recorded within_budget: the gated tool "
    "was used without a grant and nothing says so (only tool lists are checked on reports)",
)
def test_a_report_of_an_approval_gated_tool_used_without_a_grant_stops_the_run() -> None:
    run = Run(parse_policy("multi_agent: {require_approval_for: [billing.refund.create]}"))
    allowed = run.handoff("t1", "planner", "billing_agent")
    assert allowed.outcome == Outcome.ALLOW
    report = run.one(
        completed(allowed.request_id, "t1", "billing_agent", tools=["billing.refund.create"], t=1)
    )
    assert report.outcome == Outcome.STOP


@pytest.mark.parametrize("tool", ["search.*", "search.[a]", "crm.rea?", "*"])
def test_glob_characters_in_a_tool_name_are_literal(tool: str) -> None:
    # the name is the subject of the match, never a pattern: "*" does not pass an allow list
    run = Run(parse_policy("multi_agent: {tools: {allow: [crm.read], block: [shell.*]}}"))
    decided = run.handoff("t1", "a", "b", tool=tool)
    assert decided.reason == Reason.TOOL_NOT_PERMITTED


# ---------------------------------------------------------------- ownership and steps


@pytest.mark.parametrize("variant", ["billing_agent ", "billing_agent\u200b", "b\u0456lling_agent"])
def test_a_look_alike_of_the_owner_cannot_release_its_task(variant: str) -> None:
    # a space, a zero-width space, a Cyrillic i: no report can carry the look-alike (a
    # bad_name at the schema boundary); "Billing_agent" is the owner itself (names fold:
    # tests/unit/test_names.py)
    run = Run(policy_with(max_agents_per_run=None))
    owned = run.handoff("T", "planner", "billing_agent")
    with pytest.raises(ValidationError, match="bad name"):
        completed(owned.request_id, "T", variant, status="error", t=1)
    taken = run.handoff("T", "planner", "thief", t=2)
    assert taken.reason == Reason.OWNERSHIP_CONFLICT


def test_a_redelivered_report_counts_its_steps_once() -> None:
    run = Run(policy_with(max_steps=10, max_handoffs=None))
    allowed = run.handoff("t1", "a", "b")
    report = completed(allowed.request_id, "t1", "b", steps=6, t=1)
    run.one(report)
    run.one(report)
    run.one(completed(allowed.request_id, "t1", "b", steps=6, t=5))  # a retry, stamped anew
    assert run.state is not None and run.state.steps == 6
    assert run.handoff("t2", "a", "c", t=6).outcome == Outcome.ALLOW


def test_a_report_under_another_agents_name_is_checked_against_the_owners_tools() -> None:
    run = Run(
        parse_policy('multi_agent: {roles: {billing_agent: {tools: {allow: ["billing.*"]}}}}')
    )
    allowed = run.handoff("t1", "planner", "billing_agent")
    report = run.one(completed(allowed.request_id, "t1", "someone_else", tools=["shell.exec"], t=1))
    assert report.reason == Reason.TOOL_NOT_PERMITTED
