"""Session 12 (H4): session 11's rule changes attacked as a hostile orchestrator.

``require_lineage`` dodged through a released task: an agent at the depth limit hands a
shallow task its owner released to another agent, naming its own task as the parent, and
the new owner starts a fresh chain from the released task's place. Each test fails on the
commit before its fix.
"""

from __future__ import annotations

import pytest

from baton.schemas.decision import Outcome, Reason
from tests.unit.test_engine_support import Run, completed, policy_with

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
