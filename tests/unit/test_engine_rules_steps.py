"""max_steps: the run's total of reported steps is limited, like its shared budget."""

from __future__ import annotations

import orjson
import pytest

from baton.processors.engine import request_digest
from baton.processors.state import RunState
from baton.schemas.decision import Outcome, Phase, Reason
from baton.schemas.events import HandoffCompleted, HandoffRequested
from tests.unit.test_engine_support import Run, at, completed, policy_with

pytestmark = pytest.mark.unit


def _report(run: Run, task: str, steps: int, t: float) -> object:
    allowed = run.handoff(task, "planner", "worker", t=t)
    assert allowed.outcome == Outcome.ALLOW, allowed
    return run.one(completed(allowed.request_id, task, "worker", steps=steps, t=t))


def test_the_completion_that_goes_over_max_steps_stops_the_run() -> None:
    run = Run(policy_with(max_steps=10, max_handoffs=None))
    assert _report(run, "t1", 6, 0).reason == Reason.WITHIN_BUDGET  # type: ignore[attr-defined]
    over = _report(run, "t2", 5, 1)
    assert (over.phase, over.outcome, over.reason) == (  # type: ignore[attr-defined]
        Phase.POST_HANDOFF,
        Outcome.STOP,
        Reason.STEP_BUDGET_EXCEEDED,
    )
    assert over.detail == "steps 11 > max_steps 10"  # type: ignore[attr-defined]
    after = run.handoff("t3", "planner", "worker", t=2)
    assert (after.outcome, after.reason) == (Outcome.STOP, Reason.STEP_BUDGET_EXCEEDED)


def test_reaching_max_steps_exactly_stops_the_next_handoff_for_good() -> None:
    run = Run(policy_with(max_steps=10, max_handoffs=None))
    assert _report(run, "t1", 10, 0).reason == Reason.WITHIN_BUDGET  # type: ignore[attr-defined]
    nxt = run.handoff("t2", "planner", "worker", t=1)
    assert (nxt.reason, nxt.detail) == (Reason.STEP_BUDGET_EXCEEDED, "steps 10 >= max_steps 10")
    assert run.state is not None and run.state.stopped == Reason.STEP_BUDGET_EXCEEDED


def test_without_max_steps_steps_are_counted_but_nothing_stops() -> None:
    run = Run(policy_with(max_handoffs=None))
    _report(run, "t1", 1_000_000, 0)
    _report(run, "t2", 1_000_000, 1)
    assert run.state is not None and run.state.steps == 2_000_000
    assert RunState.from_bytes(run.state.to_bytes()).steps == 2_000_000


def test_a_redelivered_completion_counts_its_steps_once() -> None:
    run = Run(policy_with(max_steps=10))
    allowed = run.handoff("t1", "planner", "worker")
    report = completed(allowed.request_id, "t1", "worker", steps=7)
    first = run.one(report)
    again = run.one(report)
    assert first == again and run.state is not None and run.state.steps == 7


def test_new_fields_at_their_defaults_keep_the_old_digest() -> None:
    # digests are in decision ids, approval ids and run state: an event without the new
    # fields must digest as it did before they existed (the hash below is from before)
    request = HandoffRequested(
        request_id="r", run_id="run", task_id="t", from_agent="a", to_agent="b", event_time=at(0)
    )
    done = HandoffCompleted(request_id="r", run_id="run", task_id="t", agent="b", event_time=at(0))
    assert (request_digest(request), request_digest(done)) == OLD_DIGESTS
    assert request_digest(done.model_copy(update={"steps": 3})) != request_digest(done)
    assert request_digest(request.model_copy(update={"tools": ["x"]})) != request_digest(request)


#: request_digest of the two events above, computed by Baton before `tools` and `steps`
OLD_DIGESTS = ("5d76e4e46c69acc3", "87ef9972b57160f5")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 1_000_001),
        ("steps", -1),
        ("tools", ["t"] * 65),
        ("tools", ["x" * 257]),
    ],
)
def test_a_new_field_past_its_bound_is_an_out_of_range_dead_letter(
    field: str, value: object
) -> None:
    from baton.schemas.events import EventError, parse_event

    doc = {
        "type": "handoff_completed",
        "request_id": "r",
        "run_id": "run",
        "task_id": "t",
        "agent": "a",
        "event_time": "2026-03-01T09:00:00Z",
        field: value,
    }
    with pytest.raises(EventError) as caught:
        parse_event(orjson.dumps(doc), b"run")
    assert caught.value.kind == "out_of_range", caught.value


def test_steps_must_be_an_integer() -> None:
    from baton.schemas.events import EventError, parse_event

    raw = (
        b'{"type":"handoff_completed","request_id":"r","run_id":"run","task_id":"t",'
        b'"agent":"a","steps":"7","event_time":"2026-03-01T09:00:00Z"}'
    )
    with pytest.raises(EventError) as caught:
        parse_event(raw, b"run")
    assert caught.value.kind == "schema" and "steps" in str(caught.value)
