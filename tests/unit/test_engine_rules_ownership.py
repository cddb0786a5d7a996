"""release_ownership_on: a failed owner's task can be handed to another agent."""

from __future__ import annotations

import pytest

from baton.processors.state import RunState
from baton.schemas.decision import Outcome, Reason
from tests.unit.test_engine_support import Run, completed, policy_with

pytestmark = pytest.mark.unit


def _owned_then_failed(status: str = "error", run: Run | None = None) -> Run:
    run = run or Run()
    allowed = run.handoff("refund_check", "planner", "billing_agent")
    assert allowed.outcome == Outcome.ALLOW
    run.last_done = run.complete(allowed, cost_usd=0.5, status=status, t=1)  # type: ignore[attr-defined]
    return run


@pytest.mark.parametrize("status", ["error", "cancelled"])
def test_a_failed_owner_releases_the_task_and_another_agent_takes_it(status: str) -> None:
    run = _owned_then_failed(status)
    done = run.last_done  # type: ignore[attr-defined]
    assert (done.outcome, done.reason) == (Outcome.RECORDED, Reason.OWNERSHIP_RELEASED)
    assert done.owner == "billing_agent" and "released by billing_agent" in (done.detail or "")

    retry = run.handoff("refund_check", "planner", "support_agent", t=2)

    assert (retry.outcome, retry.owner) == (Outcome.ALLOW, "support_agent")
    assert run.state is not None and run.state.task("refund_check").owner == "support_agent"
    # and the new owner holds it like any owner
    third = run.handoff("refund_check", "planner", "billing_agent", t=3)
    assert (third.outcome, third.reason) == (Outcome.STOP, Reason.OWNERSHIP_CONFLICT)


def test_a_successful_completion_keeps_the_owner() -> None:
    run = _owned_then_failed("ok")
    assert run.last_done.reason == Reason.WITHIN_BUDGET  # type: ignore[attr-defined]
    again = run.handoff("refund_check", "planner", "support_agent", t=2)
    assert (again.outcome, again.reason) == (Outcome.STOP, Reason.OWNERSHIP_CONFLICT)


def test_another_agents_failure_report_does_not_free_the_task() -> None:
    # a forged or mistaken report by support_agent must not let it take billing's task over
    run = Run()
    run.handoff("refund_check", "planner", "billing_agent")
    report = run.one(completed("req-1", "refund_check", "support_agent", status="error", t=1))
    assert report.reason == Reason.WITHIN_BUDGET
    taken = run.handoff("refund_check", "planner", "support_agent", t=2)
    assert (taken.outcome, taken.reason) == (Outcome.STOP, Reason.OWNERSHIP_CONFLICT)


def test_release_statuses_come_from_the_policy() -> None:
    run = _owned_then_failed("timeout", Run(policy_with(release_ownership_on=["timeout"])))
    assert run.last_done.reason == Reason.OWNERSHIP_RELEASED  # type: ignore[attr-defined]
    kept = _owned_then_failed("error", Run(policy_with(release_ownership_on=[])))
    assert kept.last_done.reason == Reason.WITHIN_BUDGET  # type: ignore[attr-defined]
    stop = kept.handoff("refund_check", "planner", "support_agent", t=2)
    assert stop.reason == Reason.OWNERSHIP_CONFLICT


def test_a_released_task_keeps_its_place_in_the_tree() -> None:
    run = Run(policy_with(max_delegation_depth=2, max_agents_per_run=None))
    run.handoff("plan", "orchestrator", "planner")
    child = run.handoff("search", "planner", "search_agent", parent_task_id="plan", t=1)
    assert child.depth == 2
    run.complete(child, status="error", t=2)
    # handed again without its parent link: the depth is the tree's, not reset to 1
    again = run.handoff("search", "planner", "writer", t=3)
    assert (again.outcome, again.depth, again.parent_task_id) == (Outcome.ALLOW, 2, None)
    assert run.state is not None and run.state.task("search").parent == "plan"
    deeper = run.handoff("dig", "writer", "helper", parent_task_id="search", t=4)
    assert (deeper.outcome, deeper.reason) == (Outcome.STOP, Reason.DELEGATION_DEPTH_EXCEEDED)


def test_a_released_task_survives_the_state_round_trip_and_the_tree_merge() -> None:
    run = _owned_then_failed("error", Run(policy_with(max_handoffs=None, max_agents_per_run=None)))
    for i in range(40):  # past TASK_FOLD: the replaced node is merged into the shared dict
        run.handoff(f"t{i}", "planner", f"agent{i % 3}", t=2)
    assert run.state is not None
    restored = RunState.from_bytes(run.state.to_bytes())
    assert restored == run.state and restored.task("refund_check").owner == ""
    run.state = restored
    assert run.handoff("refund_check", "planner", "writer", t=3).outcome == Outcome.ALLOW
    assert RunState.from_bytes(run.state.to_bytes()) == run.state


def test_a_release_in_shadow_mode_is_recorded_and_frees_the_task() -> None:
    run = _owned_then_failed("error", Run(policy_with(shadow_mode=True)))
    assert run.last_done.reason == Reason.OWNERSHIP_RELEASED  # type: ignore[attr-defined]
    took = run.handoff("refund_check", "planner", "support_agent", t=2)
    assert (took.outcome, took.shadow_outcome, took.owner) == (Outcome.ALLOW, None, "support_agent")
