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
