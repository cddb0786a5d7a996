"""A report counted before its run's eviction, redelivered after another report reused its
request id at the tombstone (found by hypothesis in session 18, on
test_attacks_session11_rules's redelivery property): it was counted a second time.

At a tombstone, a report's own key (``c:<request id>``) is free again, so a later report
under the same request id with other content took it; the earlier report's redelivery then
met that key with another digest, was read as a report under a reused id, found no key of
its own and was counted under one (steps 12 + 12). The tombstone's mark of the earlier report
(``c#<digest>``) was only looked at when its request id's key was not held.
"""

from __future__ import annotations

import orjson
import pytest

from baton.processors.engine import decide, evict
from baton.processors.state import RunState
from baton.schemas.decision import Reason
from tests.unit.test_engine_support import at, completed, handoff, seed_policy


def test_a_report_counted_before_eviction_is_not_counted_again_after_a_reused_id() -> None:
    policy = seed_policy()
    state, _ = decide(None, handoff("r0", "t0", "planner", "researcher"), policy, at(0))
    first = completed("r0", "t0", "researcher", 1.5, 2, steps=12, t=1)
    state, _ = decide(state, first, policy, at(1))
    assert (state.spent_usd, state.steps) == (1.5, 12)
    tomb = evict(state, at(100), 30.0, 1e9)
    assert tomb is not None and tomb.evicted_at is not None
    state = RunState.from_bytes(tomb.to_bytes())
    # another report under the same request id (a late cost: it counts)
    second = completed("r0", "t0", "researcher", 0.25, 1, steps=3, t=101)
    state, _ = decide(state, second, policy, at(101))
    assert (state.spent_usd, state.steps) == (pytest.approx(1.75), 15)
    # the first report redelivered: counted before the eviction, never again
    state, out = decide(state, first, policy, at(102))
    assert (state.spent_usd, state.steps, state.tool_calls) == (pytest.approx(1.75), 15, 3)
    assert [d.reason for d in out] == [Reason.REPLY_NOT_KEPT]
    # and the second's redelivery is its own answer, not counted either
    state, out = decide(state, second, policy, at(103))
    assert (state.spent_usd, state.steps) == (pytest.approx(1.75), 15)


def test_a_report_an_older_engine_counted_again_at_a_tombstone_gets_that_answer_again() -> None:
    """A state the engines of cb3bfad to d286532^ wrote: the earlier report, redelivered at
    the tombstone after another report took its request id's key, counted again under its
    own key (``c:<request id>#<digest>``) beside the tombstone's mark of it. Its next copy is
    a redelivery of that count and gets its kept answer, never reply_not_kept under a new
    decision id: why answer_known looks the tombstone's mark up after the report's own key,
    not in one check before the key lookup (session 19, H2)."""
    policy = seed_policy()
    state, _ = decide(None, handoff("r0", "t0", "planner", "researcher"), policy, at(0))
    first = completed("r0", "t0", "researcher", 1.5, 2, steps=12, t=1)
    state, _ = decide(state, first, policy, at(1))
    tomb = evict(state, at(100), 30.0, 1e9)
    assert tomb is not None
    wire = orjson.loads(tomb.to_bytes())
    (mark,) = wire["keys"]
    assert mark.startswith("c#")  # the tombstone's mark of the first report
    wire["keys"], wire["mk"] = [], 0  # (without it, this engine counts it again as they did)
    state = RunState.from_bytes(orjson.dumps(wire))
    state, _ = decide(state, completed("r0", "t0", "researcher", 0.25, 1, t=101), policy, at(101))
    state, again = decide(state, first, policy, at(102))
    assert state.spent_usd == pytest.approx(3.25)  # counted again, as those engines did
    wire = orjson.loads(state.to_bytes())  # and the tombstone's mark, as they kept it
    wire["keys"], wire["mk"] = [mark, *wire["keys"]], wire["mk"] + 1
    wire["dg"] = [None, *wire["dg"]]
    state = RunState.from_bytes(orjson.dumps(wire))
    state, out = decide(state, first, policy, at(103))
    assert state.spent_usd == pytest.approx(3.25)
    assert [(d.reason, d.decision_id) for d in out] == [(d.reason, d.decision_id) for d in again]
