"""The issue-14 rules under attack: forged and careless reports, races and name games.

Each test is one attack. Those marked xfail(strict=True) are open findings of the attack
review (H12): the engine still fails open there; the reason names what it should do. The
others pin what was tried and held.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from baton.processors.state import SEEN_LIMIT, RunState
from baton.schemas.decision import Decision, Outcome, Reason
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


GATED = "multi_agent: {require_approval_for: ['billing.refund.*'], max_agents_per_run: 9}"


def _granted(run: Run, task: str = "t1", **fields: object) -> Decision:
    """A gated handoff planner -> billing_agent, asked and granted by finance_lead."""
    asked = run.handoff(task, "planner", "billing_agent", **fields)
    assert asked.outcome == Outcome.APPROVAL_REQUIRED and asked.approval_id is not None
    (allowed,) = run.grant(asked.approval_id, "finance_lead")
    assert (allowed.outcome, allowed.reason) == (Outcome.ALLOW, Reason.APPROVAL_GRANTED)
    return allowed


def _report(run: Run, rid: str, *tools: str, task: str = "t1", agent: str = "billing_agent",
            **fields: object) -> Decision:  # fmt: skip
    return run.one(completed(rid, task, agent, tools=list(tools), t=run.clock + 1, **fields))


def test_a_report_of_an_approval_gated_tool_used_without_a_grant_stops_the_run() -> None:
    run = Run(parse_policy(GATED))
    allowed = run.handoff("t1", "planner", "billing_agent")
    assert allowed.outcome == Outcome.ALLOW
    report = _report(run, allowed.request_id, "search.web", "billing.refund.create")
    assert (report.outcome, report.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)
    assert "billing.refund.create" in (report.detail or "") and "billing_agent" in report.detail
    assert "was not granted" in report.detail
    assert run.handoff("t2", "planner", "writer").reason == Reason.TOOL_NOT_PERMITTED  # sticky


def test_a_grant_covers_the_gated_tools_its_request_declared_and_no_other() -> None:
    run = Run(parse_policy(GATED))
    allowed = _granted(run, tools=["billing.refund.create", "search.web"])
    ok = _report(run, allowed.request_id, "billing.refund.create", "search.web")
    assert (ok.outcome, ok.reason) == (Outcome.RECORDED, Reason.WITHIN_BUDGET)

    other = _granted(run, "t2", tool="billing.refund.create")
    report = _report(run, other.request_id, "billing.refund.void", task="t2")
    assert (report.outcome, report.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)
    assert "billing.refund.void" in (report.detail or "") and "other tools" in report.detail


def test_a_grant_for_an_action_covers_that_name_reported_as_a_tool() -> None:
    run = Run(parse_policy(GATED))
    allowed = _granted(run, action="billing.refund.create")
    assert _report(run, allowed.request_id, "billing.refund.create").outcome == Outcome.RECORDED


@pytest.mark.parametrize(
    ("rid", "task", "agent"),
    [("other", "t1", "billing_agent"), ("own", "t9", "billing_agent"), ("own", "t1", "mallory")],
)
def test_a_grant_does_not_cover_a_report_under_another_request_task_or_agent(
    rid: str, task: str, agent: str
) -> None:
    run = Run(parse_policy(GATED))
    granted_one = _granted(run, tool="billing.refund.create")
    plain = run.handoff("t5", "planner", "search_agent")
    request_id = granted_one.request_id if rid == "own" else plain.request_id
    report = _report(run, request_id, "billing.refund.create", task=task, agent=agent)
    assert (report.outcome, report.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)


def test_a_grant_survives_a_restart_and_its_report_spends_it_once() -> None:
    run = Run(parse_policy(GATED))
    allowed = _granted(run, tool="billing.refund.create")
    assert run.state is not None
    run.state = RunState.from_bytes(run.state.to_bytes())  # the worker restarted
    tools = ["billing.refund.create"]
    report = completed(allowed.request_id, "t1", "billing_agent", 0.5, tools=tools, t=2)
    first = run.one(report)
    assert (first.outcome, first.reason) == (Outcome.RECORDED, Reason.WITHIN_BUDGET)
    assert run.state.grants == {allowed.request_id: ("t1", "billing_agent", ())}  # spent
    state = run.state
    assert run.one(report) == first and run.state.spent_usd == 0.5  # redelivered
    assert run.state == state
    # the same request id reused for a second report of the gated tool: one grant, one use
    again = completed(allowed.request_id, "t1", "billing_agent", 0.7, tools=tools, t=3)
    assert run.one(again).reason == Reason.TOOL_NOT_PERMITTED


def test_shadow_mode_records_an_ungranted_gated_tool_and_enforces_nothing() -> None:
    run = Run(parse_policy(GATED.replace("}", ", shadow_mode: true}")))
    allowed = run.handoff("t1", "planner", "billing_agent", tool="billing.refund.create")
    assert allowed.shadow_outcome == Outcome.APPROVAL_REQUIRED
    report = _report(run, allowed.request_id, "billing.refund.create")
    assert (report.outcome, report.shadow_outcome) == (Outcome.RECORDED, Outcome.STOP)
    assert run.state is not None and run.state.stopped is None


@pytest.mark.parametrize("tool", ["search.*", "search.[a]", "crm.rea?"])
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


def test_a_grant_forgotten_past_max_grants_stops_its_report_never_passes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("baton.processors.approvals.MAX_GRANTS", 2)
    run = Run(parse_policy(GATED))
    first, second, third = (_granted(run, f"t{i}", tool="billing.refund.create") for i in (1, 2, 3))
    assert run.state is not None and list(run.state.grants) == [second.request_id, third.request_id]
    ok = _report(run, third.request_id, "billing.refund.create", task="t3")
    assert ok.reason == Reason.WITHIN_BUDGET
    forgotten = _report(run, first.request_id, "billing.refund.create")
    assert (forgotten.outcome, forgotten.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)


def test_a_granted_request_id_reused_after_the_dedup_window_is_refused() -> None:
    run = Run(parse_policy(GATED))
    allowed = _granted(run, tool="billing.refund.create")
    for i in range(SEEN_LIMIT + 8):  # the grant's dedup marks leave the window
        run.handoff(f"other{i}", "planner", "writer")
    # the same id for another request (no gated tool named): refused, or its report would
    # use the first request's grant
    again = run.handoff("t1", "planner", "billing_agent", request_id=allowed.request_id)
    assert (again.outcome, again.reason) == (Outcome.STOP, Reason.REQUEST_ID_REUSED)
