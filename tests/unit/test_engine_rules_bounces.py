"""max_bounces: work handed back and forth (two agents, or a loop of three) is stopped,
whatever the task ids."""

from __future__ import annotations

import pytest

from baton.processors.state import RunState
from baton.schemas.decision import Outcome, Reason
from tests.unit.test_engine_support import Run, policy_with

pytestmark = pytest.mark.unit


def _run(max_bounces: int | None = 2) -> Run:
    return Run(policy_with(max_bounces=max_bounces, max_handoffs=None))


def test_ping_pong_with_fresh_task_ids_is_stopped_as_a_delegation_cycle() -> None:
    run = _run(2)
    assert run.handoff("t1", "triage", "billing").outcome == Outcome.ALLOW
    assert run.handoff("t2", "billing", "triage").outcome == Outcome.ALLOW  # bounce 1
    assert run.handoff("t3", "triage", "billing").outcome == Outcome.ALLOW  # bounce 2

    third = run.handoff("t4", "billing", "triage")

    assert (third.outcome, third.reason) == (Outcome.STOP, Reason.DELEGATION_CYCLE)
    assert "triage and billing" in (third.detail or "") and "max_bounces 2" in third.detail
    assert run.state is not None and run.state.stopped is None  # one handoff refused, not the run


def test_the_same_direction_again_is_not_a_bounce() -> None:
    run = _run(1)
    run.handoff("t1", "planner", "writer")
    run.handoff("t2", "planner", "writer")
    run.handoff("t3", "planner", "writer")
    assert run.handoff("t4", "writer", "planner").outcome == Outcome.ALLOW  # bounce 1
    assert run.handoff("t5", "writer", "planner").outcome == Outcome.ALLOW  # same way
    assert run.handoff("t6", "planner", "writer").reason == Reason.DELEGATION_CYCLE


def test_other_pairs_and_stopped_handoffs_do_not_count() -> None:
    run = _run(1)
    run.handoff("t1", "a", "b")
    run.handoff("t2", "b", "a")  # a/b: bounce 1
    assert run.handoff("t3", "b", "c").outcome == Outcome.ALLOW
    assert run.handoff("t4", "c", "b").outcome == Outcome.ALLOW  # b/c: bounce 1
    assert run.handoff("t5", "a", "b").reason == Reason.DELEGATION_CYCLE
    # the refused one was not counted: the pair's last handoff is still b -> a
    assert run.handoff("t6", "b", "a").outcome == Outcome.ALLOW


def test_without_max_bounces_nothing_is_counted() -> None:
    run = _run(None)
    for i in range(6):
        assert run.handoff(f"t{i}", "a" if i % 2 else "b", "b" if i % 2 else "a").outcome == (
            Outcome.ALLOW
        )
    assert run.state is not None and run.state.bounces == {}


def test_zero_bounces_allows_one_direction_only() -> None:
    run = _run(0)
    run.handoff("t1", "a", "b")
    assert run.handoff("t2", "b", "a").reason == Reason.DELEGATION_CYCLE


def test_bounces_survive_the_state_round_trip() -> None:
    run = _run(1)
    run.handoff("t1", "a", "b")
    run.handoff("t2", "b", "a")
    assert run.state is not None
    run.state = RunState.from_bytes(run.state.to_bytes())
    assert run.state.bounces == {("a", "b"): ("b", 1)}
    assert run.handoff("t3", "a", "b").reason == Reason.DELEGATION_CYCLE


def test_three_agents_in_a_loop_with_fresh_task_ids_are_stopped_as_a_delegation_cycle() -> None:
    run = _run(1)
    for i, (giver, taker) in enumerate([("a", "b"), ("b", "c"), ("c", "a")] * 2):
        if i < 5:  # a -> b -> c -> a: one bounce of each pair, then the loop again
            assert run.handoff(f"t{i}", giver, taker).outcome == Outcome.ALLOW, i
    second = run.handoff("t9", "c", "a")  # the loop closed a second time

    assert (second.outcome, second.reason) == (Outcome.STOP, Reason.DELEGATION_CYCLE)
    assert "c closes the loop a -> b -> c -> a (2 times) > max_bounces 1" in (second.detail or "")


def test_zero_bounces_refuses_the_handoff_that_closes_a_three_agent_loop() -> None:
    run = _run(0)
    run.handoff("t1", "a", "b")
    run.handoff("t2", "b", "c")
    assert run.handoff("t3", "c", "a").reason == Reason.DELEGATION_CYCLE
    assert run.handoff("t4", "c", "d").outcome == Outcome.ALLOW  # leaving the loop is fine


def test_a_task_tree_fanning_out_is_not_a_loop() -> None:
    run = _run(0)
    for i, (giver, taker) in enumerate(
        [("orchestrator", "planner"), ("planner", "a"), ("planner", "b"), ("a", "b"), ("a", "b")]
    ):
        assert run.handoff(f"t{i}", giver, taker).outcome == Outcome.ALLOW, (giver, taker)
