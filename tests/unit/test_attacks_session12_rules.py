"""Session 12 (H4): session 11's rule changes attacked as a hostile orchestrator.

``require_lineage`` dodged through a released task: an agent at the depth limit hands a
shallow task its owner released to another agent, naming its own task as the parent, and
the new owner starts a fresh chain from the released task's place. Each test fails on the
commit before its fix.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from baton.processors.engine import decide, expire_due
from baton.processors.state import RunState
from baton.schemas.decision import Outcome, Reason
from baton.schemas.events import ApprovalDenied, ApprovalGranted, HandoffRequested
from tests.unit.test_attacks_session11_rules import LINEAGE_POLICY
from tests.unit.test_engine_properties_session10 import histories
from tests.unit.test_engine_support import Run, at, completed, policy_with

pytestmark = pytest.mark.unit

_OPEN = {"max_handoffs": None, "max_agents_per_run": None, "max_bounces": None}


def _released_root(require_lineage: bool) -> Run:
    """planner -> a (t1, depth 1) -> b (t2, depth 2 of 2); a then fails t1, which frees it."""
    run = Run(
        policy_with(
            **_OPEN,
            require_lineage=require_lineage,
            max_delegation_depth=2,
            release_ownership_on=["error"],
        )
    )
    assert run.handoff("t1", "planner", "a").outcome == Outcome.ALLOW
    assert run.handoff("t2", "a", "b", parent_task_id="t1").outcome == Outcome.ALLOW
    assert run.handoff("t3", "b", "c", parent_task_id="t2").reason == (
        Reason.DELEGATION_DEPTH_EXCEEDED
    )
    released = run.one(completed("req-1", "t1", "a", status="error"))
    assert released.reason == Reason.OWNERSHIP_RELEASED
    return run


def test_an_agent_at_the_depth_limit_cannot_hand_on_a_released_shallow_task() -> None:
    # b (depth 2 of 2) may not delegate; naming its own t2 as the parent it handed the
    # released root task t1 to c (lineage passed: b owns t2), and c stood at depth 1 with a
    # fresh chain below it: c -> d under t1 was allowed at depth 2
    run = _released_root(True)

    dodge = run.handoff("t1", "b", "c", parent_task_id="t2")

    assert (dodge.outcome, dodge.reason) == (Outcome.STOP, Reason.LINEAGE_REQUIRED)
    assert dodge.detail is not None and "t1" in dodge.detail
    assert run.handoff("t4", "c", "d", parent_task_id="t1").outcome == Outcome.STOP


def test_a_released_task_is_still_handed_on_from_its_place_in_the_tree() -> None:
    # the honest re-handoffs: the run's first agent hands its released root task to another
    # agent, and a released task below it is handed on by its parent's owner
    run = _released_root(True)
    assert run.handoff("t1", "planner", "a2").outcome == Outcome.ALLOW
    assert run.handoff("t5", "a2", "x", parent_task_id="t1").outcome == Outcome.ALLOW
    assert run.one(completed("req-9", "t5", "x", status="error")).reason == (
        Reason.OWNERSHIP_RELEASED
    )
    assert run.handoff("t5", "a2", "y", parent_task_id="t1").outcome == Outcome.ALLOW


def test_without_require_lineage_a_released_task_is_handed_on_as_before() -> None:
    # the default decides as before (test_diff_session10 holds it too)
    run = _released_root(False)
    assert run.handoff("t1", "b", "c", parent_task_id="t2").outcome == Outcome.ALLOW


def test_no_agent_becomes_the_runs_first_while_its_first_handoff_awaits_approval() -> None:
    # the planner's first handoff asked for approval (nothing allowed yet, no agents): b's
    # handoff in that window was the run's first allowed one, b became its first agent (free
    # to start chains), and the planner's granted handoff was stopped lineage_required
    run = Run(policy_with(**_OPEN, require_lineage=True, require_approval_for=["pay"]))
    asked = run.handoff("t1", "planner", "a", action="pay")
    assert asked.outcome == Outcome.APPROVAL_REQUIRED

    race = run.handoff("tb", "b", "c")

    assert (race.outcome, race.reason) == (Outcome.STOP, Reason.LINEAGE_REQUIRED)
    assert asked.approval_id is not None
    [granted] = run.grant(asked.approval_id, "human")
    assert (granted.outcome, granted.reason) == (Outcome.ALLOW, Reason.APPROVAL_GRANTED)
    assert run.handoff("t2", "a", "d", parent_task_id="t1").outcome == Outcome.ALLOW


@settings(max_examples=200, deadline=None)
@given(histories)
def test_under_require_lineage_no_allow_puts_a_task_above_its_givers_place(history: list) -> None:
    # session 10's histories (releases, grants, sweeps, redeliveries, case variants) under
    # require_lineage: a task handed on by an agent other than the run's first stands below
    # the parent task its giver named (the giver's place in the tree), never above it (a
    # guard: these histories did not find the released-task dodge above in 3,000 examples)
    state: RunState | None = None
    approvals: list[str] = []
    clock = 0
    for step, dt in history:
        clock += dt
        if isinstance(step, str):
            if step == "sweep" and state is not None:
                state, _ = expire_due(state, LINEAGE_POLICY, at(clock))
            continue
        event = step
        if type(event) in (ApprovalGranted, ApprovalDenied):
            which = int(event.approval_id[1:])
            if which >= len(approvals):
                continue
            event = event.model_copy(update={"approval_id": approvals[which]})
        before = state
        state, decisions = decide(state, event, LINEAGE_POLICY, at(clock))
        if state is before:  # answered from the run's memory (a redelivery, a refusal)
            continue
        for d in decisions:
            if d.outcome is Outcome.APPROVAL_REQUIRED and d.approval_id not in approvals:
                approvals.append(d.approval_id)  # type: ignore[arg-type]
            if d.outcome is not Outcome.ALLOW or before is None or state is None:
                continue
            req = (
                before.pending[d.approval_id].request  # type: ignore[index]
                if d.reason == Reason.APPROVAL_GRANTED
                else event
            )
            assert type(req) is HandoffRequested
            first = next(iter(before.agents), None)
            if first is None or req.from_agent == first or req.parent_task_id is None:
                continue
            parent = before.task(req.parent_task_id)
            node = state.task(req.task_id)
            assert parent is not None and node is not None
            assert node.depth >= parent.depth + 1, (req, parent, node)
