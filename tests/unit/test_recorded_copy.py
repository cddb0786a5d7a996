"""The worker's published copies of decisions (processors.recorded.publishable): every field
carried over, as dataclasses.replace would, with only the input or the re-emitted flag set."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, datetime

from pydantic import BaseModel

from baton.processors.recorded import publishable
from baton.processors.state import RunState
from baton.schemas.decision import DECISION_FIELDS, Decision, Fallback, Outcome, Phase

WHEN = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)


class _Event(BaseModel):
    type: str = "handoff_requested"
    run_id: str = "r1"


def _every_field_set() -> Decision:
    """A decision whose every field holds a value of its own (none at its default)."""
    d = Decision("d1", "q1", "r1", "t1", Phase.PRE_HANDOFF, Outcome.STOP, "handoff_budget_exceeded")
    values = {
        "owner": "o", "from_agent": "a", "to_agent": "b", "task_id": "t", "parent_task_id": "p",
        "action": "act", "depth": 3, "handoff_count": 4, "spent_usd": 1.5, "tool_calls": 6,
        "handoff_status": "error", "fallback": Fallback.CONSTRAINED, "approval_id": "ap",
        "approval_expires_at": WHEN, "approver": "boss", "policy_version": "v9",
        "event_time": WHEN, "decided_at": WHEN, "worker": "w", "partition": 7, "offset": 8,
        "shadow_outcome": Outcome.ALLOW, "tool": "sh", "reserved_usd": 0.25, "detail": "why",
        "request_digest": "dg", "chain_prev": None, "chain_hash": None, "input": "{}",
        "reemitted": False,
    }  # fmt: skip
    for name, value in values.items():
        setattr(d, name, value)
    unset = [f.name for f in fields(Decision)[7:] if f.name not in values]
    assert not unset, f"a new Decision field needs a value here: {unset}"
    return d


def test_every_field_is_an_init_argument_in_order() -> None:
    """The copy passes every field to __init__ by position: a field left out of __init__ or
    made keyword-only would break it."""
    assert tuple(f.name for f in fields(Decision) if f.init) == DECISION_FIELDS
    assert not any(f.kw_only for f in fields(Decision))


def test_a_new_decision_is_published_as_a_copy_with_the_input() -> None:
    d = _every_field_set()
    d.input = None
    [copy] = publishable(RunState.new("r1", "t1", WHEN.timestamp()), [d], _Event(), '{"x":1}')
    assert copy is not d and d.input is None
    assert copy == replace(d, input='{"x":1}')


def test_a_linked_decision_is_published_as_a_reemitted_copy() -> None:
    d = _every_field_set()
    d.chain_prev, d.chain_hash = "", "h1"
    [copy] = publishable(RunState.new("r1", "t1", WHEN.timestamp()), [d], _Event(), '{"x":1}')
    assert copy is not d and not d.reemitted
    assert copy == replace(d, reemitted=True, input='{"x":1}')  # the input it answers
