"""A request decided again on a run's tombstone never takes the id of a live-run decision."""

from __future__ import annotations

import pytest

from baton.processors.engine import Origin, decide, evict
from baton.processors.state import SEEN_LIMIT, RunState
from baton.schemas.decision import Decision, Outcome, Reason
from baton.schemas.events import RunEvent
from tests.unit.test_attacks_session4b import _recorded_with_sweeps, _replayed
from tests.unit.test_engine_support import at, completed, finished, handoff, seed_policy

pytestmark = pytest.mark.unit


def _tombstone_of(events: list[RunEvent]) -> tuple[RunState, dict[str, Decision]]:
    """The run after ``events`` (offsets 0..), evicted by the sweep an hour later; the
    live-run decisions by request id."""
    policy, state, live = seed_policy(), None, {}
    for offset, event in enumerate(events):
        state, out = decide(state, event, policy, at(offset), origin=Origin("w", 0, offset))
        live.update({d.request_id: d for d in out})
    assert state is not None
    tomb = evict(state, at(3700), 3600.0, 86400.0)
    assert tomb is not None and tomb.evicted_at is not None
    return tomb, live


def test_a_copied_request_decided_on_the_tombstone_gets_an_id_of_its_own() -> None:
    """H10's finding: the copy's stop run_finished had the original allow's id, and the
    audit (ReplacingMergeTree on decision_id) kept the stop: one record erased a decision."""
    request = handoff("h1", "t1", "planner", "researcher")
    tomb, live = _tombstone_of([request, finished(t=1)])
    _, out = decide(tomb, request, seed_policy(), at(3800), origin=Origin("w", 0, 7))
    assert (out[0].outcome, out[0].reason) == (Outcome.STOP, Reason.RUN_FINISHED)
    assert live["h1"].outcome is Outcome.ALLOW
    assert out[0].decision_id != live["h1"].decision_id


def test_a_copied_finish_or_report_on_the_tombstone_keeps_the_live_ids() -> None:
    report = completed("c1", "t1", "researcher", 0.5)
    request = handoff("h1", "t1", "planner", "researcher")
    tomb, live = _tombstone_of([request, report, finished(t=2)])
    for offset, event in enumerate([report, finished(t=2)], start=10):
        _, out = decide(tomb, event, seed_policy(), at(3800), origin=Origin("w", 0, offset))
        assert out[0].decision_id not in {d.decision_id for d in live.values()}


def test_a_redelivered_record_on_the_tombstone_gets_the_same_id_again() -> None:
    """The sink and the exactly-once dedup rely on a redelivery keeping its id."""
    request = handoff("h1", "t1", "planner", "researcher")
    tomb, _ = _tombstone_of([request, finished(t=1)])
    _, first = decide(tomb, request, seed_policy(), at(3800), origin=Origin("w", 0, 7))
    _, again = decide(tomb, request, seed_policy(), at(3900), origin=Origin("w2", 0, 7))
    _, elsewhere = decide(tomb, request, seed_policy(), at(3900), origin=Origin("w", 0, 8))
    _, other_partition = decide(tomb, request, seed_policy(), at(3900), origin=Origin("w", 1, 7))
    assert first[0].decision_id == again[0].decision_id
    assert elsewhere[0].decision_id != first[0].decision_id
    assert other_partition[0].decision_id != first[0].decision_id


def test_the_audit_keeps_every_decision_and_replays_as_recorded() -> None:
    """/tmp/h10/dup.py: the request, its run's finish, then the request copied twice after
    the sweep evicted the run. Every decision keeps its own id, and the chain replays."""
    request = handoff("h1", "t1", "planner", "researcher")
    policy, rows = _recorded_with_sweeps(
        [
            (request, at(0), ()),
            (finished(t=10), at(10), ()),
            (request, at(3700), (3650.0,)),
            (request, at(3800), ()),
        ]
    )
    ids = [r.decision_id for r in rows]
    assert len(set(ids)) == len(ids) == 3  # the second copy is answered from the tombstone
    assert [r.reason for r in rows] == ["ok", "run_finished", "run_finished"]
    assert _replayed(policy, rows) == []  # nothing partial, nothing unfaithful


def test_a_request_copied_after_it_left_a_long_runs_dedup_window_gets_an_id_of_its_own() -> None:
    """A live run remembers its newest SEEN_LIMIT keys: a request older than that is decided
    anew (here stopped, the run over its handoffs) and must not replace its first allow."""
    policy = seed_policy()
    request = handoff("h1", "t1", "planner", "researcher")
    state, first = decide(None, request, policy, at(0), origin=Origin("w", 0, 0))
    for n in range(1, SEEN_LIMIT + 2):
        report = completed(f"c{n}", "t1", "researcher", t=n)
        state, _ = decide(state, report, policy, at(n), origin=Origin("w", 0, n))
    assert not state.has_seen("h:h1")
    _, copy = decide(state, request, policy, at(9000), origin=Origin("w", 0, 9000))
    _, again = decide(state, request, policy, at(9001), origin=Origin("w2", 0, 9000))
    assert first[0].outcome is Outcome.ALLOW
    assert copy[0].decision_id != first[0].decision_id
    assert again[0].decision_id == copy[0].decision_id
