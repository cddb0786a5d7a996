"""Session 10 (H3): the governance rules attacked by a careless or hostile orchestrator.

Each test is one sequence of events that got an ``allow`` where the policy says stop (found
by hand and by the oracle search of tests/unit/test_engine_properties_session10.py); each
fails on the commit before its fix.
"""

from __future__ import annotations

import pytest

from baton.processors.rule_checks import MAX_CHAIN_HOPS
from baton.schemas.decision import Outcome, Reason
from baton.schemas.events import MAX_COUNT, MAX_RUN_COUNT, MAX_RUN_USD, MAX_USD, ApprovalGranted
from baton.schemas.policy import Policy, parse_policy
from tests.unit.test_engine_support import Run, at, completed, policy_with

pytestmark = pytest.mark.unit

_OPEN = {"max_handoffs": None, "max_agents_per_run": None, "max_delegation_depth": None}


# ---------------------------------------------------------------- reservations


def test_a_handoff_without_an_estimate_is_stopped_while_spent_and_reserved_are_over() -> None:
    # two sub-agents reserve 5 + 5 of 10; one reports 8 (over its estimate): 8 spent and 5
    # still reserved is 13 > 10. The same handoff with estimated_usd 0 was stopped; without
    # an estimate it was allowed, and the run oversubscribed its shared budget
    run = Run(policy_with(**_OPEN, shared_max_usd=10))
    a = run.handoff("t1", "planner", "a", estimated_usd=5)
    run.handoff("t2", "planner", "b", estimated_usd=5)
    run.one(completed(a.request_id, "t1", "a", cost_usd=8))
    assert run.state is not None
    assert (run.state.spent_usd, run.state.reserved_usd) == (8, 5)

    bare = run.handoff("t3", "planner", "c")

    assert (bare.outcome, bare.reason) == (Outcome.STOP, Reason.SHARED_BUDGET_EXCEEDED)
    assert bare.detail is not None and "reserved" in bare.detail
    # not a sticky stop: once the reservation is settled within the budget, work goes on
    run.one(completed("req-2", "t2", "b", cost_usd=1))
    assert run.handoff("t4", "planner", "c").outcome == Outcome.ALLOW


def test_reserved_tool_calls_over_the_limit_stop_a_handoff_without_an_estimate() -> None:
    run = Run(policy_with(**_OPEN, shared_max_usd=None, shared_max_tool_calls=10))
    a = run.handoff("t1", "planner", "a", estimated_tool_calls=5)
    run.handoff("t2", "planner", "b", estimated_tool_calls=5)
    run.one(completed(a.request_id, "t1", "a", tool_calls=8))

    bare = run.handoff("t3", "planner", "c")

    assert (bare.outcome, bare.reason) == (Outcome.STOP, Reason.SHARED_BUDGET_EXCEEDED)


def test_a_granted_handoff_without_an_estimate_meets_the_reservations_too() -> None:
    run = Run(policy_with(**_OPEN, shared_max_usd=10, require_approval_for=["billing.*"]))
    asked = run.handoff("t9", "planner", "billing", action="billing.refund.create")
    assert asked.outcome == Outcome.APPROVAL_REQUIRED and asked.approval_id
    a = run.handoff("t1", "planner", "a", estimated_usd=5)
    run.handoff("t2", "planner", "b", estimated_usd=5)
    run.one(completed(a.request_id, "t1", "a", cost_usd=8))

    [answer] = run.grant(asked.approval_id, "finance_lead")

    assert (answer.outcome, answer.reason) == (Outcome.STOP, Reason.SHARED_BUDGET_EXCEEDED)


# ---------------------------------------------------------------- saturated totals


def test_a_tool_call_limit_above_the_saturated_total_is_still_enforced() -> None:
    # a run's totals saturate at MAX_RUN_COUNT (2**31 - 1); a policy may set up to 2**53.
    # 2,200 reports of 1,000,000 tool calls each (2.2e9 > the 2.197e9 limit) all stayed
    # within_budget and the run's next handoff was allowed
    limit = MAX_RUN_COUNT + 50_000_000
    run = Run(policy_with(**_OPEN, shared_max_usd=None, shared_max_tool_calls=limit))
    run.handoff("t1", "planner", "a")
    reports = [run.one(completed(f"c{i}", "t1", "a", tool_calls=MAX_COUNT)) for i in range(2200)]

    assert run.state is not None and run.state.tool_calls == MAX_RUN_COUNT
    stops = [d for d in reports if d.outcome == Outcome.STOP]
    assert [d.reason for d in stops] == [Reason.SHARED_BUDGET_EXCEEDED]
    assert stops[0] is reports[2147]  # the report that saturated the total
    nxt = run.handoff("t2", "planner", "a")
    assert (nxt.outcome, nxt.reason) == (Outcome.STOP, Reason.SHARED_BUDGET_EXCEEDED)


def test_a_step_limit_above_the_saturated_total_is_still_enforced() -> None:
    run = Run(policy_with(**_OPEN, shared_max_usd=None, max_steps=2**40))
    run.handoff("t1", "planner", "a")
    for i in range(2148):
        run.one(completed(f"c{i}", "t1", "a", steps=MAX_COUNT))
    assert run.state is not None and run.state.steps == MAX_RUN_COUNT

    nxt = run.handoff("t2", "planner", "a")

    assert (nxt.outcome, nxt.reason) == (Outcome.STOP, Reason.STEP_BUDGET_EXCEEDED)


def test_a_usd_limit_above_the_saturated_spend_is_still_enforced() -> None:
    run = Run(policy_with(**_OPEN, shared_max_usd=2 * MAX_RUN_USD))
    run.handoff("t1", "planner", "a")
    for i in range(int(MAX_RUN_USD / MAX_USD)):
        run.one(completed(f"c{i}", "t1", "a", cost_usd=MAX_USD))
    assert run.state is not None and run.state.spent_usd == MAX_RUN_USD

    nxt = run.handoff("t2", "planner", "a")

    # the spend saturated: Baton no longer knows it is under 2e9, so it stops
    assert (nxt.outcome, nxt.reason) == (Outcome.STOP, Reason.SHARED_BUDGET_EXCEEDED)


def test_limits_below_the_saturation_are_compared_as_before() -> None:
    run = Run(policy_with(**_OPEN, shared_max_usd=None, shared_max_tool_calls=MAX_RUN_COUNT - 1))
    run.handoff("t1", "planner", "a")
    for i in range(2147):
        run.one(completed(f"c{i}", "t1", "a", tool_calls=MAX_COUNT))
    assert run.state is not None and run.state.tool_calls == 2_147_000_000
    assert run.handoff("t2", "planner", "a").outcome == Outcome.ALLOW


# ---------------------------------------------------------------- delegation cycles


def test_a_cycle_back_to_the_root_of_a_chain_longer_than_64_tasks_is_stopped() -> None:
    # detect_delegation_cycles walked 64 parent links and then answered "not on the chain":
    # a chain of 70 distinct agents handed its last task back to the first agent, allowed
    run = Run(policy_with(**_OPEN, detect_delegation_cycles=True))
    agents = [f"agent{i}" for i in range(71)]
    for i in range(70):
        d = run.handoff(
            f"t{i}", agents[i], agents[i + 1], parent_task_id=f"t{i - 1}" if i else None
        )
        assert d.outcome == Outcome.ALLOW, d

    back = run.handoff("tz", agents[70], agents[0], parent_task_id="t69")

    assert (back.outcome, back.reason) == (Outcome.STOP, Reason.DELEGATION_CYCLE)


def test_a_chain_too_long_to_walk_is_stopped_as_a_cycle_never_let_through() -> None:
    run = Run(policy_with(**_OPEN, detect_delegation_cycles=True))
    for i in range(MAX_CHAIN_HOPS + 1):  # each walks the i tasks above it
        parent = f"t{i - 1}" if i else None
        d = run.handoff(f"t{i}", f"agent{i}", f"agent{i + 1}", parent_task_id=parent)
        assert d.outcome == Outcome.ALLOW, d

    last = MAX_CHAIN_HOPS + 1
    past = run.handoff("tz", f"agent{last}", "fresh_agent", parent_task_id=f"t{last - 1}")

    assert (past.outcome, past.reason) == (Outcome.STOP, Reason.DELEGATION_CYCLE)
    assert past.detail is not None and str(MAX_CHAIN_HOPS) in past.detail


def test_parent_links_that_loop_are_a_cycle() -> None:
    # t1 names t2 as its parent before t2 exists, then t2 names t1: the links loop; a
    # handoff under them was walked 64 times round the loop, then allowed
    run = Run(policy_with(**_OPEN, detect_delegation_cycles=True))
    assert run.handoff("t1", "A", "B", parent_task_id="t2").outcome == Outcome.ALLOW
    assert run.handoff("t2", "C", "D", parent_task_id="t1").outcome == Outcome.ALLOW

    under = run.handoff("t3", "E", "F", parent_task_id="t1")

    assert (under.outcome, under.reason) == (Outcome.STOP, Reason.DELEGATION_CYCLE)


def test_a_released_task_handed_back_up_its_own_chain_without_naming_its_parent_is_a_cycle() -> (
    None
):
    # t2 sits under t1 (A -> B) in the run's tree. Its owner releases it, and B hands it to A
    # naming no parent: the rule walked the request's parent (none), not the task's, so
    # A -> B -> A on one chain was allowed
    run = Run(policy_with(**_OPEN, detect_delegation_cycles=True))
    run.handoff("t1", "A", "B")
    run.handoff("t2", "B", "C", parent_task_id="t1")
    assert run.handoff("t3", "B", "A", parent_task_id="t1").reason == Reason.DELEGATION_CYCLE
    run.one(completed("req-2", "t2", "C", status="error"))

    back = run.handoff("t2", "B", "A")

    assert (back.outcome, back.reason) == (Outcome.STOP, Reason.DELEGATION_CYCLE)
    assert run.state is not None and run.state.task("t2") is not None
    assert run.state.task("t2").owner == ""  # still free: the stop took nothing


def test_a_released_task_may_go_to_an_agent_off_its_chain() -> None:
    run = Run(policy_with(**_OPEN, detect_delegation_cycles=True))
    run.handoff("t1", "A", "B")
    run.handoff("t2", "B", "C", parent_task_id="t1")
    run.one(completed("req-2", "t2", "C", status="error"))
    assert run.handoff("t2", "B", "D").outcome == Outcome.ALLOW


# ---------------------------------------------------------------- strict_tenants


def _tenants_policy(strict: bool, *tenants: str) -> Policy:
    listed = ", ".join(f"{t}: {{max_handoffs: 20}}" for t in tenants)
    return parse_policy(
        f"strict_tenants: {str(strict).lower()}\n"
        "multi_agent: {max_handoffs: 50, max_agents_per_run: 9, require_approval_for: ['pay.*']}\n"
        f"tenants: {{{listed}}}\n",
        "tenants",
    )


def test_a_run_begun_before_strict_tenants_was_on_gets_no_more_allows() -> None:
    # strict_tenants refused only a run's first event: a run an unlisted tenant began before
    # the policy update that turned it on went on being allowed under the default limits
    run = Run(_tenants_policy(False, "acme"), tenant="evil")
    assert run.handoff("t1", "planner", "a").outcome == Outcome.ALLOW
    run.policy = _tenants_policy(True, "acme")

    later = run.handoff("t2", "planner", "a")

    assert (later.outcome, later.reason) == (Outcome.STOP, Reason.UNKNOWN_TENANT)


def test_a_tenant_taken_off_the_list_is_stopped_until_listed_again() -> None:
    run = Run(_tenants_policy(True, "acme", "globex"), tenant="globex")
    assert run.handoff("t1", "planner", "a").outcome == Outcome.ALLOW
    asked = run.handoff("t2", "planner", "b", action="pay.out")
    assert asked.outcome == Outcome.APPROVAL_REQUIRED and asked.approval_id
    run.policy = _tenants_policy(True, "acme")  # globex offboarded

    assert run.handoff("t3", "planner", "a").reason == Reason.UNKNOWN_TENANT
    grant = ApprovalGranted(
        approval_id=asked.approval_id,
        run_id="run-1",
        tenant="globex",
        approver="boss",
        event_time=at(0),
    )
    answer = run.one(grant)
    assert (answer.outcome, answer.reason) == (Outcome.STOP, Reason.UNKNOWN_TENANT)

    run.policy = _tenants_policy(True, "acme", "globex")  # not sticky
    assert run.handoff("t4", "planner", "a").outcome == Outcome.ALLOW
