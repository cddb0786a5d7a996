"""The boundary of every limit: the last handoff inside a limit passes, the first outside stops."""

from __future__ import annotations

import pytest

from baton.processors.engine import HARD_MAX_HANDOFFS, new_state
from baton.schemas.decision import Fallback, Outcome, Phase, Reason
from baton.schemas.events import EventError, parse_event
from tests.unit.test_engine_support import Run, at, policy_with

pytestmark = pytest.mark.unit

UNLIMITED = dict(
    max_agents_per_run=None,
    max_handoffs=None,
    max_delegation_depth=None,
    shared_max_usd=None,
    shared_max_tool_calls=None,
    require_approval_for=[],
)


# ------------------------------------------------------------------ max_agents_per_run


def test_fourth_agent_joins_and_fifth_is_stopped_by_max_agents_per_run() -> None:
    run = Run()  # seed: max_agents_per_run 4; the planner handing work out is one of them
    for agent in ("search_agent", "billing_agent", "support_agent"):
        assert run.handoff(f"task-{agent}", "planner", agent).outcome == Outcome.ALLOW

    fifth = run.handoff("task-shipping", "planner", "shipping_agent")

    assert fifth.outcome == Outcome.STOP
    assert fifth.reason == Reason.AGENT_LIMIT_EXCEEDED
    assert fifth.fallback == Fallback.SINGLE_AGENT
    assert run.state is not None and "shipping_agent" not in run.state.agents


def test_agents_already_in_the_run_keep_working_at_the_agent_limit() -> None:
    run = Run()
    for agent in ("search_agent", "billing_agent", "support_agent"):
        run.handoff(f"task-{agent}", "planner", agent)
    run.handoff("task-x", "planner", "shipping_agent")  # stopped, not sticky
    assert run.handoff("task-y", "billing_agent", "support_agent").outcome == Outcome.ALLOW


def test_a_handoff_bringing_two_new_agents_counts_both() -> None:
    run = Run()
    run.handoff("t1", "planner", "a1")
    run.handoff("t2", "planner", "a2")  # 3 agents
    d = run.handoff("t3", "b1", "b2")  # would make 5
    assert d.reason == Reason.AGENT_LIMIT_EXCEEDED


# ------------------------------------------------------------------ max_handoffs


def test_zero_max_handoffs_stops_the_first_handoff() -> None:
    run = Run(policy_with(max_handoffs=0))
    assert run.handoff("t1", "planner", "worker").reason == Reason.HANDOFF_BUDGET_EXCEEDED


def test_without_max_handoffs_a_run_is_still_capped_by_the_hard_limit() -> None:
    run = Run(policy_with(**UNLIMITED))
    run.state = new_state("run-1", "default", at(0))
    run.state.handoff_count = HARD_MAX_HANDOFFS - 1
    assert run.handoff("t-last", "planner", "worker").outcome == Outcome.ALLOW
    assert run.handoff("t-over", "planner", "worker").reason == Reason.HANDOFF_BUDGET_EXCEEDED


# ------------------------------------------------------------------ max_delegation_depth


def _chain(run: Run, depth: int) -> list[str]:
    """Tasks t1 (root, depth 1) .. t<depth>, each a child of the previous; returns task ids."""
    tasks: list[str] = []
    agents = ["planner", "a1", "a2", "a3", "a4", "a5"]
    for level in range(1, depth + 1):
        d = run.handoff(
            f"t{level}",
            agents[level - 1],
            agents[level],
            parent_task_id=tasks[-1] if tasks else None,
        )
        assert d.outcome == Outcome.ALLOW, d
        assert d.depth == level
        tasks.append(f"t{level}")
    return tasks


def test_third_level_is_allowed_and_fourth_is_stopped_by_max_delegation_depth() -> None:
    run = Run(policy_with(max_agents_per_run=None))  # seed: max_delegation_depth 3
    tasks = _chain(run, 3)

    d = run.handoff("t4", "a3", "a4", parent_task_id=tasks[-1])

    assert d.outcome == Outcome.STOP
    assert d.reason == Reason.DELEGATION_DEPTH_EXCEEDED
    assert d.depth == 4
    assert d.fallback == Fallback.SINGLE_AGENT


def test_depth_comes_from_the_task_tree_not_from_the_client() -> None:
    run = Run(policy_with(max_agents_per_run=None))
    _chain(run, 3)
    # a client claiming depth 1 is refused (no such field); Baton computes it from parent t3
    raw = (
        b'{"type":"handoff_requested","request_id":"req-deep","run_id":"run-1","task_id":"t4",'
        b'"parent_task_id":"t3","from_agent":"a3","to_agent":"a4","depth":1,'
        b'"event_time":"2026-03-01T09:00:00Z"}'
    )
    with pytest.raises(EventError, match="unknown field 'depth'"):
        parse_event(raw, b"run-1")
    d = run.one(parse_event(raw.replace(b'"depth":1,', b""), b"run-1"))
    assert d.reason == Reason.DELEGATION_DEPTH_EXCEEDED and d.depth == 4


def test_child_of_a_task_baton_never_saw_is_one_level_below_a_root() -> None:
    run = Run()
    d = run.handoff("child", "planner", "worker", parent_task_id="unknown-parent")
    assert d.outcome == Outcome.ALLOW and d.depth == 2


# ------------------------------------------------------------------ shared_max_usd


def test_handoff_is_allowed_below_shared_max_usd_and_stopped_once_it_is_spent() -> None:
    run = Run()  # seed: shared_max_usd 30
    first = run.handoff("t1", "planner", "worker")
    run.complete(first, cost_usd=29.99)
    second = run.handoff("t2", "planner", "worker")
    assert second.outcome == Outcome.ALLOW

    post = run.complete(second, cost_usd=0.01)  # exactly 30.00: within budget
    assert post.outcome == Outcome.RECORDED and post.reason == Reason.WITHIN_BUDGET

    third = run.handoff("t3", "planner", "worker")
    assert third.outcome == Outcome.STOP
    assert third.reason == Reason.SHARED_BUDGET_EXCEEDED
    assert third.fallback == Fallback.SINGLE_AGENT


def test_completion_that_overspends_shared_max_usd_stops_post_handoff_and_the_run() -> None:
    run = Run()
    first = run.handoff("t1", "planner", "worker")

    post = run.complete(first, cost_usd=30.01, tool_calls=1)

    assert post.phase == Phase.POST_HANDOFF
    assert post.outcome == Outcome.STOP
    assert post.reason == Reason.SHARED_BUDGET_EXCEEDED
    assert post.spent_usd == pytest.approx(30.01)
    assert post.fallback == Fallback.SINGLE_AGENT
    later = run.handoff("t2", "planner", "worker")
    assert later.outcome == Outcome.STOP and later.reason == Reason.SHARED_BUDGET_EXCEEDED


def test_spend_is_shared_by_all_agents_of_the_run() -> None:
    run = Run()
    allowed = [run.handoff(f"t{i}", "planner", f"agent{i}") for i in range(1, 4)]
    posts = [run.complete(d, cost_usd=10.5) for d in allowed]  # 10.5 + 10.5 + 10.5
    assert [p.outcome for p in posts] == [Outcome.RECORDED, Outcome.RECORDED, Outcome.STOP]


# ------------------------------------------------------------------ shared_max_tool_calls


def test_handoff_is_stopped_once_shared_max_tool_calls_are_used() -> None:
    run = Run()  # seed: shared_max_tool_calls 120
    first = run.handoff("t1", "planner", "worker")
    run.complete(first, tool_calls=119)
    second = run.handoff("t2", "planner", "worker")
    assert second.outcome == Outcome.ALLOW
    assert run.complete(second, tool_calls=1).reason == Reason.WITHIN_BUDGET  # 120 exactly

    third = run.handoff("t3", "planner", "worker")

    assert third.outcome == Outcome.STOP and third.reason == Reason.SHARED_BUDGET_EXCEEDED


def test_completion_over_shared_max_tool_calls_stops_post_handoff() -> None:
    run = Run()
    first = run.handoff("t1", "planner", "worker")
    post = run.complete(first, tool_calls=121)
    assert post.outcome == Outcome.STOP and post.reason == Reason.SHARED_BUDGET_EXCEEDED
    assert post.tool_calls == 121


# ------------------------------------------------------------------ max_run_seconds


def test_run_wall_clock_limit_allows_until_max_run_seconds_then_stops_for_good() -> None:
    run = Run(policy_with(max_run_seconds=60))
    run.handoff("t1", "planner", "worker", t=0)  # the run starts here
    assert run.handoff("t2", "planner", "worker", t=60).outcome == Outcome.ALLOW

    late = run.handoff("t3", "planner", "worker", t=60.5)

    assert late.outcome == Outcome.STOP and late.reason == Reason.SHARED_BUDGET_EXCEEDED
    assert "max_run_seconds" in (late.detail or "")
    assert run.state is not None and run.state.stopped == Reason.SHARED_BUDGET_EXCEEDED


# ------------------------------------------------------------------ reservations


def test_parallel_subagents_cannot_reserve_more_than_the_shared_budget_together() -> None:
    run = Run()  # shared_max_usd 30
    a = run.handoff("research", "planner", "research_agent", estimated_usd=20)
    assert a.outcome == Outcome.ALLOW and a.reserved_usd == pytest.approx(20)

    b = run.handoff("summary", "planner", "writer_agent", estimated_usd=15)

    assert b.outcome == Outcome.STOP and b.reason == Reason.SHARED_BUDGET_EXCEEDED
    assert b.fallback == Fallback.SINGLE_AGENT
    # an estimate that does not fit refuses this handoff only, not the run
    assert run.state is not None and run.state.stopped is None
    assert run.handoff("small", "planner", "writer_agent", estimated_usd=10).outcome == (
        Outcome.ALLOW
    )


def test_completion_settles_the_reservation_with_the_real_cost() -> None:
    run = Run()
    a = run.handoff("research", "planner", "research_agent", estimated_usd=20)
    post = run.complete(a, cost_usd=12)
    assert post.spent_usd == pytest.approx(12) and post.reserved_usd == 0

    # 12 spent + 15 estimated fits into 30 now that the reservation of 20 is settled
    b = run.handoff("summary", "planner", "writer_agent", estimated_usd=15)
    assert b.outcome == Outcome.ALLOW and b.reserved_usd == pytest.approx(15)


def test_estimated_tool_calls_are_reserved_against_shared_max_tool_calls() -> None:
    run = Run()  # shared_max_tool_calls 120
    a = run.handoff("crawl", "planner", "crawler", estimated_tool_calls=100)
    assert a.outcome == Outcome.ALLOW
    b = run.handoff("crawl2", "planner", "crawler2", estimated_tool_calls=21)
    assert b.reason == Reason.SHARED_BUDGET_EXCEEDED
    run.complete(a, tool_calls=50)
    assert run.handoff("crawl3", "planner", "crawler2", estimated_tool_calls=70).outcome == (
        Outcome.ALLOW
    )


def test_estimate_exactly_filling_the_budget_is_allowed() -> None:
    run = Run()
    assert run.handoff("t1", "planner", "w", estimated_usd=30).outcome == Outcome.ALLOW
    assert run.handoff("t2", "planner", "w", estimated_usd=0.01).outcome == Outcome.STOP


# ------------------------------------------------------------------ role map


ROLES = {
    "planner": {"may_delegate_to": ["billing_agent", "search_*"]},
    "billing_agent": {"may_own": ["refund_*", "invoice_*"]},
}


def test_role_map_refuses_a_delegation_the_giver_may_not_make() -> None:
    run = Run(policy_with(roles=ROLES))
    d = run.handoff("chat", "planner", "support_agent")
    assert d.outcome == Outcome.STOP and d.reason == Reason.ROLE_NOT_PERMITTED
    assert d.fallback == Fallback.SINGLE_AGENT
    assert run.handoff("lookup", "planner", "search_web").outcome == Outcome.ALLOW


def test_role_map_refuses_a_task_kind_the_taker_may_not_own() -> None:
    run = Run(policy_with(roles=ROLES))
    assert run.handoff("shipping_label", "planner", "billing_agent").reason == (
        Reason.ROLE_NOT_PERMITTED
    )
    assert run.handoff("refund_check", "planner", "billing_agent").outcome == Outcome.ALLOW


def test_role_map_reads_task_kind_when_the_task_id_is_opaque() -> None:
    run = Run(policy_with(roles=ROLES))
    ok = run.handoff("t-81f3", "planner", "billing_agent", task_kind="invoice_pdf")
    bad = run.handoff("t-81f4", "planner", "billing_agent", task_kind="payroll")
    assert ok.outcome == Outcome.ALLOW
    assert bad.reason == Reason.ROLE_NOT_PERMITTED


# ------------------------------------------------------------------ tools


TOOLS = {"allow": ["search.*", "billing.*"], "block": ["billing.delete*"]}


@pytest.mark.parametrize(
    ("tool", "outcome"),
    [
        ("search.web", Outcome.ALLOW),
        ("billing.refund.read", Outcome.ALLOW),
        ("billing.delete_customer", Outcome.STOP),  # allowed by glob, but blocked
        ("shell.exec", Outcome.STOP),  # not on the allow list
        (None, Outcome.ALLOW),  # a handoff without a tool
    ],
)
def test_tool_allow_and_block_lists(tool: str | None, outcome: Outcome) -> None:
    run = Run(policy_with(tools=TOOLS, require_approval_for=[]))
    d = run.handoff("t1", "planner", "worker", tool=tool)
    assert d.outcome == outcome
    if outcome == Outcome.STOP:
        assert d.reason == Reason.TOOL_NOT_PERMITTED and d.tool == tool


def test_block_list_alone_allows_every_other_tool() -> None:
    run = Run(policy_with(tools={"block": ["shell.*"]}))
    assert run.handoff("t1", "planner", "w", tool="shell.exec").reason == Reason.TOOL_NOT_PERMITTED
    assert run.handoff("t2", "planner", "w", tool="anything.else").outcome == Outcome.ALLOW


# ------------------------------------------------------------------ delegation cycles


def _ping_pong(run: Run) -> tuple[str, str]:
    first = run.handoff("research", "agent_a", "agent_b")
    back = run.handoff("research.followup", "agent_b", "agent_a", parent_task_id="research")
    return first.outcome, back.outcome


def test_a_to_b_to_a_is_allowed_by_default_so_the_seed_depth_limit_behaves_as_written() -> None:
    assert _ping_pong(Run()) == (Outcome.ALLOW, Outcome.ALLOW)


def test_a_to_b_to_a_is_stopped_as_a_delegation_cycle_when_the_policy_turns_it_on() -> None:
    run = Run(policy_with(detect_delegation_cycles=True))
    first = run.handoff("research", "agent_a", "agent_b")
    back = run.handoff("research.followup", "agent_b", "agent_a", parent_task_id="research")
    assert first.outcome == Outcome.ALLOW
    assert back.outcome == Outcome.STOP and back.reason == Reason.DELEGATION_CYCLE
    assert back.fallback == Fallback.SINGLE_AGENT


def test_cycle_detection_follows_the_whole_chain_not_just_the_parent() -> None:
    run = Run(policy_with(detect_delegation_cycles=True, max_delegation_depth=None))
    run.handoff("t1", "agent_a", "agent_b")
    run.handoff("t2", "agent_b", "agent_c", parent_task_id="t1")
    d = run.handoff("t3", "agent_c", "agent_a", parent_task_id="t2")
    assert d.reason == Reason.DELEGATION_CYCLE
    # a fresh agent deeper down is not a cycle
    assert run.handoff("t3b", "agent_c", "agent_d", parent_task_id="t2").outcome == Outcome.ALLOW
