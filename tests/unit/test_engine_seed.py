"""The seed's three scenarios, word for word, under the seed policy."""

from __future__ import annotations

import pytest

from baton.schemas.decision import Fallback, Outcome, Phase, Reason
from tests.unit.test_engine_support import Run

pytestmark = pytest.mark.unit


def test_refund_check_owned_by_billing_agent_cannot_be_handed_to_another_agent() -> None:
    run = Run()
    first = run.handoff("refund_check", "planner", "billing_agent")
    assert first.outcome == Outcome.ALLOW and first.owner == "billing_agent"

    conflict = run.handoff("refund_check", "planner", "support_agent")

    assert conflict.phase == Phase.PRE_HANDOFF
    assert conflict.outcome == Outcome.STOP
    assert conflict.reason == Reason.OWNERSHIP_CONFLICT
    assert conflict.owner == "billing_agent"
    assert conflict.to_agent == "support_agent"
    assert conflict.task_id == "refund_check"
    assert conflict.fallback == Fallback.SINGLE_AGENT
    assert run.state is not None and run.state.task("refund_check").owner == "billing_agent"


def test_handing_refund_check_again_to_its_owner_is_not_a_conflict() -> None:
    run = Run()
    run.handoff("refund_check", "planner", "billing_agent")
    again = run.handoff("refund_check", "planner", "billing_agent")
    assert again.outcome == Outcome.ALLOW and again.owner == "billing_agent"


def test_eighth_handoff_is_allowed_and_ninth_is_stopped_with_fallback() -> None:
    run = Run()  # seed: max_handoffs 8
    decisions = [run.handoff(f"task-{i}", "planner", "worker") for i in range(1, 9)]
    assert [d.outcome for d in decisions] == [Outcome.ALLOW] * 8
    assert decisions[-1].handoff_count == 8

    ninth = run.handoff("task-9", "planner", "worker")

    assert ninth.outcome == Outcome.STOP
    assert ninth.reason == Reason.HANDOFF_BUDGET_EXCEEDED
    assert ninth.fallback == Fallback.SINGLE_AGENT
    assert ninth.handoff_count == 8


def test_run_stays_stopped_after_the_handoff_budget_is_exceeded() -> None:
    run = Run()
    for i in range(1, 10):
        run.handoff(f"task-{i}", "planner", "worker")
    # an agent that already owns a task, a fresh task: nothing gets through any more
    later = [run.handoff("task-1", "planner", "worker"), run.handoff("task-10", "worker", "helper")]
    assert all(d.outcome == Outcome.STOP for d in later)
    assert all(d.reason == Reason.HANDOFF_BUDGET_EXCEEDED for d in later)
    assert all(d.fallback == Fallback.SINGLE_AGENT for d in later)
    assert run.state is not None and run.state.handoff_count == 8


def test_managed_handoff_records_pre_handoff_allow_and_post_handoff_spend() -> None:
    run = Run()
    pre = run.handoff("refund_check", "planner", "billing_agent", action="billing.refund.lookup")

    assert pre.phase == Phase.PRE_HANDOFF
    assert pre.outcome == Outcome.ALLOW
    assert pre.reason == Reason.OK
    assert (pre.from_agent, pre.to_agent, pre.owner) == (
        "planner",
        "billing_agent",
        "billing_agent",
    )
    assert pre.depth == 1 and pre.handoff_count == 1
    assert pre.fallback is None

    post = run.complete(pre, cost_usd=1.25, tool_calls=3, status="ok", t=5)

    assert post.phase == Phase.POST_HANDOFF
    assert post.outcome == Outcome.RECORDED
    assert post.reason == Reason.WITHIN_BUDGET
    assert post.request_id == pre.request_id
    assert post.decision_id != pre.decision_id
    assert post.spent_usd == pytest.approx(1.25)
    assert post.tool_calls == 3
    assert post.handoff_status == "ok"
    assert post.owner == "billing_agent" and post.task_id == "refund_check"
    assert post.fallback is None


def test_failed_handoff_status_is_recorded_and_still_consumes_the_budget() -> None:
    run = Run()
    pre = run.handoff("refund_check", "planner", "billing_agent")
    post = run.complete(pre, cost_usd=2.5, tool_calls=7, status="error")
    assert post.handoff_status == "error"
    assert post.spent_usd == pytest.approx(2.5) and post.tool_calls == 7
