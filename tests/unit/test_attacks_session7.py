"""Attacks on session 7's changes that need no broker: the worker's published copies of
decisions (95ff62c), the scale bench's makespan rate (cb15850), and a hostile batch that
holds the loop (what an inline consumer's heartbeats wait for, 055ff80)."""

from __future__ import annotations

import math
import pickle
from collections import Counter
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from baton.processors.batch import BatchProcessor
from baton.processors.recorded import keep_links, publishable
from baton.processors.replay_report import Change, ReplayReport, RunOutcome
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome, Phase, Reason
from bench.worker_bench import makespan_rate
from tests.unit.test_batch import NOW, _good
from tests.unit.test_engine_support import policy_with
from tests.unit.test_recorded_copy import WHEN, _Event

pytestmark = pytest.mark.unit


def _decision() -> Decision:
    d = Decision("d1", "q1", "r1", "t1", Phase.PRE_HANDOFF, Outcome.ALLOW, "ok")
    d.decided_at, d.task_id, d.handoff_count = WHEN, "t", 3
    return d


def test_a_published_copy_and_the_stored_decision_change_apart() -> None:
    """A later change to the published copy (the chain link, the worker's fields) never
    shows in the decision the state keeps, nor the reverse, except the links keep_links
    copies back on purpose."""
    stored = _decision()
    [copy] = publishable(RunState.new("r1", "t1", WHEN.timestamp()), [stored], _Event(), "{}")
    assert copy is not stored and copy == replace(stored, input="{}")
    copy.partition, copy.offset, copy.worker = 3, 99, "w9"
    copy.chain_prev, copy.chain_hash = "", "h1"
    assert (stored.partition, stored.offset, stored.worker) == (None, None, None)
    assert (stored.input, stored.chain_hash) == (None, None)
    keep_links([stored], [copy])
    assert (stored.chain_prev, stored.chain_hash, stored.input) == ("", "h1", None)
    stored.handoff_count = 7
    assert copy.handoff_count == 3


def test_a_reemitted_copy_leaves_the_stored_reply_unflagged_and_linked() -> None:
    stored = _decision()
    stored.chain_prev, stored.chain_hash = "", "h1"
    [copy] = publishable(RunState.new("r1", "t1", WHEN.timestamp()), [stored], _Event(), "{}")
    assert copy.reemitted and not stored.reemitted
    assert copy == replace(stored, reemitted=True, input="{}")
    keep_links([stored], [copy])  # a re-emitted copy gives no links back
    assert (stored.chain_prev, stored.chain_hash) == ("", "h1")


def _stamps(zone: timezone, *batches: tuple[float, int]) -> Counter[str]:
    """Decisions by decided_at: ``n`` decisions stamped ``sec`` seconds past 04:00 UTC,
    written in ``zone``."""
    start = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
    return Counter(
        {(start + timedelta(seconds=sec)).astimezone(zone).isoformat(): n for sec, n in batches}
    )


def test_the_makespan_reads_the_same_whatever_zone_the_stamps_are_written_in() -> None:
    utc = makespan_rate(
        {
            "a": _stamps(UTC, (0.0, 10_000), (1.0, 10_000), (2.0, 10_000)),
            "b": _stamps(UTC, (0.1, 10_000), (1.1, 10_000), (2.1, 10_000)),
        },
        60_000,
    )
    zoned = makespan_rate(
        {
            "a": _stamps(timezone(timedelta(hours=1)), (0.0, 10_000), (1.0, 10_000), (2.0, 10_000)),
            "b": _stamps(
                timezone(timedelta(hours=-7)), (0.1, 10_000), (1.1, 10_000), (2.1, 10_000)
            ),
        },
        60_000,
    )
    assert zoned == pytest.approx(utc) == pytest.approx(60_000 / 3.1)


def test_workers_that_never_overlap_read_as_the_whole_makespan() -> None:
    # a decided its share from 0 s to 3 s, b from 10 s to 13 s: 60,000 events in 13 s
    a = _stamps(UTC, (0.0, 10_000), (1.0, 10_000), (2.0, 10_000))
    b = _stamps(UTC, (10.0, 10_000), (11.0, 10_000), (12.0, 10_000))
    assert makespan_rate({"a": a, "b": b}, 60_000) == pytest.approx(60_000 / 13)


def test_a_slow_worker_s_last_batch_sets_the_end() -> None:
    # b decides 5,000 a second: its last batch of 5,000 ends at 2.0 + 1.0 s, after a's
    a = _stamps(UTC, (0.0, 10_000), (1.0, 10_000), (2.0, 10_000))
    b = _stamps(UTC, (0.0, 5_000), (1.0, 5_000), (2.0, 5_000))
    assert makespan_rate({"a": a, "b": b}, 45_000) == pytest.approx(45_000 / 3.0)


def test_no_workers_give_no_rate() -> None:
    assert math.isnan(makespan_rate({}, 10))


def _over_budget_run(limit: int) -> tuple[BatchProcessor, dict[bytes, RunState], int]:
    """A processor holding run_b stopped at its state budget (run_state_limit), its state
    past the budget by its bounded window, and the next handoff number."""
    policy = policy_with(max_handoffs=None, max_agents_per_run=None, max_delegation_depth=None)
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(policy, 4, states, worker="w", run_state_max_bytes=limit)
    n = 0
    while states.get(b"run_b") is None or states[b"run_b"].stopped is None:
        names = [
            (f"task-{n + i:05d}-" + "x" * 200, f"agent-{n + i}" + "y" * 200) for i in range(50)
        ]
        proc.process([_good("run_b", n + i, t, to=a) for i, (t, a) in enumerate(names)], NOW)
        n += 50
    proc.process([_good("run_b", n + i) for i in range(200)], NOW)  # the window fills up
    return proc, states, n + 200


def test_events_of_a_run_stopped_at_its_state_budget_encode_its_state_once_a_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proc, states, n = _over_budget_run(8192)
    assert states[b"run_b"].stopped == Reason.RUN_STATE_LIMIT
    assert len(states[b"run_b"].to_bytes()) > 8192  # past the budget by its window
    encodes = 0
    real = RunState.to_bytes

    def counted(state: RunState) -> bytes:
        nonlocal encodes
        encodes += 1
        return real(state)

    monkeypatch.setattr(RunState, "to_bytes", counted)
    out = proc.process([_good("run_b", n + i) for i in range(300)], NOW)
    assert [d.reason for _, d in out.decisions] == [Reason.RUN_STATE_LIMIT] * 300
    assert encodes <= 2, f"{encodes} encodings of the run's state for one batch of 300 events"


def test_a_replay_report_keeps_every_field_through_a_jobs_pickle() -> None:
    """cac9b48 pickles a `--jobs` piece's report as plain tuples, field by field: a field
    set away from its default (one added later too) must come back, or a piece's unfaithful
    steps or partial runs would read as a faithful replay."""
    change = Change(3, WHEN, "q3", "a -> b", "allow", "stop:killed")
    run_values = {
        "run_id": "r1", "decisions": 9, "changed": 2, "first_change": change,
        "unfaithful": [(3, "allow", "stop:killed")], "saved_usd": 1.25,
        "blocked_estimate_usd": 0.5, "transitions": Counter({"allow -> stop": 2}),
    }  # fmt: skip
    run = RunOutcome("r1")
    for f in fields(RunOutcome):
        assert f.name in run_values, f"a new RunOutcome field needs a value here: {f.name}"
        setattr(run, f.name, run_values[f.name])
    report_values = {
        "runs": [run], "partial": {"r2": "no input"}, "transitions": Counter({"x": 1}),
        "broken": ["r2"], "oldest": WHEN, "trimmed": {"r3": (WHEN, "h0")},
    }  # fmt: skip
    report = ReplayReport()
    for f in fields(ReplayReport):
        assert f.name in report_values, f"a new ReplayReport field needs a value here: {f.name}"
        setattr(report, f.name, report_values[f.name])
    back = pickle.loads(pickle.dumps(report))
    assert back == report
    assert back.unfaithful_runs == [run] and back.partial == {"r2": "no input"}
