"""Replay of runs the worker's sweep evicted: the eviction found from the time and the chain."""

from __future__ import annotations

import math

import pytest

from baton.cli.replay_kafka import decide_topics
from baton.processors.batch import InputRecord
from baton.processors.replay import replay_runs, runs_of
from baton.processors.replay_steps import RUN_RETENTION_S, TOMBSTONE_RETENTION_S
from baton.schemas.settings import Settings
from tests.unit.test_attacks_session4b import _recorded_with_sweeps, _replayed
from tests.unit.test_engine_support import at, completed, finished, handoff, seed_policy

pytestmark = pytest.mark.unit


def test_replay_assumes_the_workers_default_run_retention() -> None:
    assert Settings.model_fields["run_retention_s"].default == RUN_RETENTION_S
    assert Settings.model_fields["tombstone_retention_s"].default == TOMBSTONE_RETENTION_S


def test_a_cost_reported_past_the_due_time_to_a_worker_that_had_not_swept_replays_live() -> None:
    """A worker down or behind past the run's due time decided the late report on the live
    run (its sweep waits for the backlog): the tombstone the time suggests does not give the
    recorded hash, the live run does, and that is what replay takes."""
    policy, rows = _recorded_with_sweeps(
        [
            (handoff("h1", "t1", "planner", "researcher", t=0), at(0), ()),
            (completed("h1", "t1", "researcher", 0.5, t=3700), at(3700), ()),
        ]
    )
    assert [r.reason for r in rows] == ["ok", "within_budget"]
    assert _replayed(policy, rows) == []


def test_a_handoff_to_a_finished_run_past_the_due_time_replays_on_the_state_it_was_decided_on() -> (
    None
):
    """Past the due time a handoff to a finished run is stopped run_finished the same on the
    live run and on its tombstone, but under another decision id (a tombstone's covers the
    input's position, so a copied request never replaces its live decision in the audit):
    the recorded id tells replay which state the worker decided it on, whether the worker had
    swept (the tombstone) or not (down or behind: the live run, which still knows the task
    the later report names)."""
    timed = [
        (handoff("h1", "t1", "planner", "researcher", t=0), at(0), ()),
        (finished(t=10), at(10), ()),
        (handoff("h2", "t9", "planner", "coder", t=4000), at(4000), ()),
        (completed("h1", "t1", "researcher", 0.5, t=4020), at(4020), ()),
    ]
    policy, swept = _recorded_with_sweeps([*timed[:2], (*timed[2][:2], (3650.0,)), timed[3]])
    assert [r.reason for r in swept][2:] == ["run_finished", "within_budget"]
    assert _replayed(policy, swept) == []
    policy, kept = _recorded_with_sweeps(timed)  # no sweep ran: the worker kept the run
    assert [r.reason for r in kept][2:] == ["run_finished", "within_budget"]
    assert swept[2].decision_id != kept[2].decision_id
    assert _replayed(policy, kept) == []


def test_history_read_from_kafka_is_replayed_without_evictions() -> None:
    """`--from-kafka` decides the topics' events by the batch step alone (no sweep): a run
    idle past the retention was never evicted there, so its replay evicts nothing either;
    with the retention the decision ids (a tombstone's cover a tombstone mark) still tell
    the live run's decisions from a tombstone's, so the replay is exact both ways."""
    timed = [
        handoff("h1", "t1", "planner", "researcher", t=0),
        finished(t=10),
        handoff("h2", "t9", "planner", "coder", t=4000),
        completed("h1", "t1", "researcher", 0.5, t=4020),
    ]
    policy = seed_policy()
    records = [
        (int(event.event_time.timestamp() * 1000), "requests", _record(n, event))
        for n, event in enumerate(timed)
    ]
    rows, policies, _ = decide_topics(records, policy, 1, "approvals", "control")
    assert replay_runs(runs_of(rows), policy, policies, retention_s=math.inf).unfaithful_runs == []
    assert replay_runs(runs_of(rows), policy, policies).unfaithful_runs == []


def _record(offset: int, event: object) -> InputRecord:
    return InputRecord("requests", 0, offset, b"run-1", event.to_json())  # type: ignore[attr-defined]
