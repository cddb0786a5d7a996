"""roles.<agent>.tools: which tools each agent may use, declared on handoffs, reported after."""

from __future__ import annotations

import pytest

from baton.schemas.decision import Outcome, Reason
from tests.unit.test_engine_support import Run, completed, policy_with

pytestmark = pytest.mark.unit

ROLES = {
    "billing_agent": {"tools": {"allow": ["billing.*", "search.web"], "block": ["billing.delete"]}},
    "search_agent": {"tools": {"block": ["shell.*"]}},
}


def _run(**extra: object) -> Run:
    return Run(policy_with(roles=ROLES, require_approval_for=["billing.refund.*"], **extra))


@pytest.mark.parametrize(
    ("agent", "tools", "refused", "listed"),
    [
        (
            "billing_agent",
            ["search.web", "shell.exec"],
            "shell.exec",
            "roles.billing_agent.tools.allow",
        ),
        ("billing_agent", ["billing.delete"], "billing.delete", "roles.billing_agent.tools.block"),
        ("search_agent", ["search.web", "shell.rm"], "shell.rm", "roles.search_agent.tools.block"),
    ],
)
def test_a_handoff_declaring_a_tool_its_agent_may_not_use_is_stopped(
    agent: str, tools: list[str], refused: str, listed: str
) -> None:
    d = _run().handoff("t1", "planner", agent, tools=tools)
    assert (d.outcome, d.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)
    assert d.detail == f"tool {refused} is not permitted for {agent} ({listed})"


def test_the_single_tool_field_is_checked_against_the_agents_list_too() -> None:
    d = _run().handoff("t1", "planner", "billing_agent", tool="crm.export")
    assert d.reason == Reason.TOOL_NOT_PERMITTED and "crm.export" in (d.detail or "")


def test_permitted_tools_and_unlisted_agents_are_allowed() -> None:
    run = _run()
    assert run.handoff("t1", "planner", "billing_agent", tools=["search.web"]).outcome == (
        Outcome.ALLOW
    )
    assert run.handoff("t2", "planner", "writer", tools=["shell.exec"]).outcome == Outcome.ALLOW


def test_the_run_wide_block_list_applies_to_every_agent_and_names_itself() -> None:
    d = _run(tools={"block": ["crm.*"]}).handoff("t1", "planner", "writer", tools=["crm.x"])
    assert d.detail == "tool crm.x is not permitted for writer (tools.block)"


def test_a_declared_tool_that_needs_approval_asks_for_one() -> None:
    d = _run().handoff("t1", "planner", "billing_agent", tools=["billing.refund.create"])
    assert (d.outcome, d.reason) == (Outcome.APPROVAL_REQUIRED, Reason.APPROVAL_PENDING)


def test_a_completion_reporting_a_forbidden_tool_stops_the_run() -> None:
    run = _run()
    allowed = run.handoff("t1", "planner", "billing_agent", tools=["search.web"])
    done = run.one(
        completed(allowed.request_id, "t1", "billing_agent", 0.2, 1, tools=["shell.exec"], t=1)
    )
    assert (done.outcome, done.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)
    assert done.detail == (
        "tool shell.exec is not permitted for billing_agent (roles.billing_agent.tools.allow)"
    )
    assert done.spent_usd == 0.2  # the cost counts all the same
    after = run.handoff("t2", "planner", "writer", t=2)
    assert (after.outcome, after.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)


def test_a_completion_reporting_permitted_tools_is_within_budget() -> None:
    run = _run()
    allowed = run.handoff("t1", "planner", "billing_agent")
    done = run.one(completed(allowed.request_id, "t1", "billing_agent", tools=["search.web"]))
    assert done.reason == Reason.WITHIN_BUDGET


def test_in_shadow_mode_a_forbidden_tool_is_recorded_and_nothing_stops() -> None:
    run = _run(shadow_mode=True)
    d = run.handoff("t1", "planner", "billing_agent", tools=["shell.exec"])
    assert (d.outcome, d.shadow_outcome) == (Outcome.ALLOW, Outcome.STOP)
    done = run.one(completed(d.request_id, "t1", "billing_agent", tools=["shell.exec"]))
    assert (done.outcome, done.shadow_outcome, done.reason) == (
        Outcome.RECORDED,
        Outcome.STOP,
        Reason.TOOL_NOT_PERMITTED,
    )
    assert run.state is not None and run.state.stopped is None
