"""Replay of histories under the new rules: the recorded policy reproduces every decision,
including the sweep's reservation expiries (timer steps without an input)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.processors.replay import replay_runs, runs_of
from baton.schemas.decision import Reason
from tests.unit.test_engine_rules_properties import POLICY, histories
from tests.unit.test_replay import KEY, _policies, record

pytestmark = pytest.mark.unit


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.sampled_from([1, 3]))
def test_replay_under_the_recorded_policy_reproduces_the_new_rules(
    timed: list, sweep_every: int
) -> None:
    events = [(event, now) for event, now in timed if event != "sweep"]
    if not events:
        return
    rows = record(POLICY, events, sweep_every)
    report = replay_runs(runs_of(rows), POLICY, _policies(POLICY), KEY)
    assert report.partial == {}
    [run] = report.runs
    assert run.decisions == len(rows) and run.unfaithful == []
    assert run.changed == 0


def test_a_swept_reservation_expiry_is_replayed_not_partial() -> None:
    from tests.unit.test_engine_support import at, handoff

    rows = record(
        POLICY,
        [
            (
                handoff("r1", "t1", "planner", "search_agent", run_id="run-p", estimated_usd=3),
                at(0),
            ),
            # another run's event: the sweep after it finds run-p's reservation due
            (handoff("r2", "t2", "planner", "writer", run_id="run-q"), at(400)),
        ],
        sweep_every=1,
    )
    expiry = next(r for r in rows if r.reason == Reason.RESERVATION_EXPIRED)
    assert expiry.input is None and expiry.run_id == "run-p"  # a timer step
    rows.sort(key=lambda r: (r.run_id, r.decided_at))
    report = replay_runs(runs_of(rows), POLICY, _policies(POLICY), KEY)
    assert report.partial == {}
    assert [(r.decisions, r.unfaithful) for r in report.runs] == [(2, []), (1, [])]
