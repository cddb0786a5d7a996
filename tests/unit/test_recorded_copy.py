"""The worker's published copies of decisions (processors.recorded_copies): every field
carried over, as dataclasses.replace would, with only the input or the re-emitted flag set;
the batch step's one pass (``published``) as publishable, chain.link and keep_links one after
the other. In CORE_TESTS: run against the compiled build too, whose copy reads native fields."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from baton.processors.chain import link
from baton.processors.recorded import keep_links, publishable
from baton.processors.recorded_copies import published
from baton.processors.state import RunState
from baton.schemas.decision import DECISION_FIELDS, Decision, Fallback, Outcome, Phase

pytestmark = pytest.mark.unit

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


def _decided(reemitted_at: set[int], n: int) -> list[Decision]:
    """``n`` decisions of their own, those at ``reemitted_at`` linked already (replies)."""
    out = []
    for i in range(n):
        d = _every_field_set()
        d.decision_id, d.input, d.detail = f"d{i}", None, f"why {i}"
        if i in reemitted_at:
            d.chain_prev, d.chain_hash = "p" * 32, f"{i:032x}"
        out.append(d)
    return out


def _fields(ds: list[Decision]) -> list[tuple[object, ...]]:
    return [tuple(getattr(d, f) for f in DECISION_FIELDS) for d in ds]


@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize("reemitted_at", [set(), {0}, {1}, {0, 1, 2}])
@pytest.mark.parametrize("case", ["changed", "unchanged", "no_state"])
def test_the_one_pass_publishes_and_links_as_the_three_steps_did(
    n: int, reemitted_at: set[int], case: str
) -> None:
    """published() gives what publishable, link (of the copies decided now) and keep_links
    gave one after the other: the same copies (JSON bytes), the same links kept in the state's
    decisions, the same chain head, and the decisions themselves published for no state."""
    runs = []
    for _ in range(2):
        state = RunState.new("r1", "t1", WHEN.timestamp())
        state.chain_head = "h" * 32
        new = {"changed": state.copy(), "unchanged": state, "no_state": None}[case]
        runs.append((state, new, _decided(reemitted_at, n)))
    (state, new, decided), (state2, new2, decided2) = runs
    # the three steps, as batch.py made them before the one pass
    expected = publishable(new, decided, _Event(), None)
    if new is not None and new is not state:
        link(new, [d for d in expected if d.chain_hash is None], b"k")
        keep_links(decided, expected)
    got = published(new2, state2, decided2, _Event(), b"k")
    assert [d.to_json() for d in got] == [d.to_json() for d in expected]
    assert _fields(decided2) == _fields(decided)
    assert [p is d for p, d in zip(got, decided2, strict=True)] == [
        p is d for p, d in zip(expected, decided, strict=True)
    ]
    if new is not None and new2 is not None:
        assert new2.chain_head == new.chain_head
    if case == "changed" and len(reemitted_at) < n:
        assert new2 is not None and new2.chain_head != "h" * 32  # linked: not vacuous
