"""Session 10 (H3): the rules' breaks of tests/unit/test_attacks_session10_rules.py, sent to a
real `baton worker` over Tansu: each was an allow the policy forbids, now a stop."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from baton.schemas.decision import Outcome, Reason
from baton.schemas.events import HandoffCompleted
from baton.streams.embedded import EmbeddedBroker
from tests.helpers import handoff

from .conftest import Stack, one_worker_stack

pytestmark = pytest.mark.integration

POLICY = """\
multi_agent:
  max_agents_per_run: 20
  max_handoffs: 50
  shared_max_usd: 10
  detect_delegation_cycles: true
"""


@pytest.fixture(scope="module")
def h3_stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with one_worker_stack(broker, tmp_path_factory.mktemp("h3rules"), POLICY, "h") as s:
        yield s


def _run() -> str:
    return f"run_{uuid.uuid4().hex[:8]}"


def _done(run: str, n: int, task: str, agent: str, **kw: object) -> HandoffCompleted:
    return HandoffCompleted(
        request_id=f"{run}-h{n}",
        run_id=run,
        task_id=task,
        agent=agent,
        event_time=datetime.now(UTC),
        **kw,  # type: ignore[arg-type]
    )


def test_a_worker_stops_a_bare_handoff_while_spent_and_reserved_are_over(h3_stack: Stack) -> None:
    run = _run()
    h3_stack.requests.send(
        [
            handoff(run, 1, "t1", "planner", "a", estimated_usd=5),
            handoff(run, 2, "t2", "planner", "b", estimated_usd=5),
            _done(run, 1, "t1", "a", cost_usd=8),  # 8 spent, 5 still reserved: 13 of 10
            handoff(run, 3, "t3", "planner", "c"),  # names no estimate: was allowed
        ]
    )
    first, second, report, bare = h3_stack.decisions.wait_run(run, 4)
    assert [first.outcome, second.outcome] == [Outcome.ALLOW, Outcome.ALLOW]
    assert (report.spent_usd, report.reserved_usd) == (8, 5)
    assert (bare.outcome, bare.reason) == (Outcome.STOP, Reason.SHARED_BUDGET_EXCEEDED)
    (stop,) = h3_stack.stops.wait_run(run, 1)
    assert stop.decision_id == bare.decision_id


def test_a_worker_stops_a_released_task_handed_back_up_its_chain(h3_stack: Stack) -> None:
    run = _run()
    h3_stack.requests.send(
        [
            handoff(run, 1, "t1", "A", "B"),
            handoff(run, 2, "t2", "B", "C", parent="t1"),
            _done(run, 2, "t2", "C", status="error"),  # C frees t2
            handoff(run, 3, "t2", "B", "A"),  # back to A, naming no parent: was allowed
        ]
    )
    decisions = h3_stack.decisions.wait_run(run, 4)
    assert [d.outcome for d in decisions[:2]] == [Outcome.ALLOW, Outcome.ALLOW]
    assert decisions[2].reason == Reason.OWNERSHIP_RELEASED
    back = decisions[3]
    assert (back.outcome, back.reason) == (Outcome.STOP, Reason.DELEGATION_CYCLE)
