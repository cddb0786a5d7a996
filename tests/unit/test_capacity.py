"""A worker's runs against its caps: tombstones count for the tombstone retention, so the caps
bound the new runs a day a worker takes for good; the worker says so as it fills, before the
first worker_run_limit, and serves the caps as gauges."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.capacity import Capacity, capacity_of, sustained_runs_per_day
from baton.processors.engine import evict
from baton.processors.metrics import WorkerMetrics
from baton.processors.state import RunState
from baton.schemas.decision import Reason
from baton.schemas.policy import load_policy
from baton.schemas.settings import Settings
from baton.streams.partitioner import partition_for
from tests.helpers import handoff

T0 = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
TOPIC = "gov.handoff.requests"


def test_the_defaults_take_about_16_700_new_runs_a_day_for_good() -> None:
    s = Settings()
    per_day = sustained_runs_per_day(s.max_runs, s.run_retention_s, s.tombstone_retention_s)
    assert 16_600 < per_day < 16_700


def test_a_tombstone_holds_its_place_against_max_runs_until_it_is_forgotten() -> None:
    """What the capacity lines warn about: runs finished and evicted still fill the worker."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), 4, states, worker="w", max_runs=2)
    for n, run in enumerate(("a", "b")):
        ev = handoff(run, 1, "t", event_time=T0).to_json()
        proc.process([InputRecord(TOPIC, partition_for(run.encode(), 4), n, run.encode(), ev)], T0)
    later = T0 + timedelta(hours=2)
    for key in list(states):  # the sweep: idle past the run retention, a tombstone
        tomb = evict(states[key], later, 3600.0, 30 * 86400.0)
        assert tomb is not None and tomb.evicted_at is not None
        states[key] = tomb
    ev = handoff("c", 1, "t", event_time=later).to_json()
    out = proc.process([InputRecord(TOPIC, partition_for(b"c", 4), 9, b"c", ev)], later)
    assert [d.reason for _, d in out.decisions] == [Reason.WORKER_RUN_LIMIT]
    assert "BATON_TOMBSTONE_RETENTION_S" in (out.decisions[0][1].detail or "")


def _capacity() -> Capacity:
    return Capacity("w1", 1000, 1 << 30, 3600.0, 30 * 86400.0)


def test_it_warns_at_half_at_four_fifths_and_near_the_cap_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap = _capacity()
    caplog.set_level(logging.WARNING, "baton.processors.app")
    lines = [cap.check(runs, 0, 5.0 * t) for t, runs in enumerate((100, 400, 499, 500, 501))]
    assert lines[:4] == [None, None, None, lines[3]] and lines[4] is None
    assert lines[3] is not None
    assert (
        "worker w1 holds 50% of what it may: 500 runs and tombstones of max_runs 1,000"
        in (lines[3])
    )
    assert "(the cap in ~" in lines[3]  # grew from 100 to 500 over 15 s
    assert "takes ~33 new runs a day for good" in lines[3]
    assert "raise BATON_MAX_RUNS" in lines[3] and "lower BATON_TOMBSTONE_RETENTION_S" in lines[3]
    assert cap.check(800, 0, 30.0) is not None
    assert cap.check(900, 0, 31.0) is None
    assert "holds 96%" in (cap.check(960, 0, 32.0) or "")
    assert [r.levelname for r in caplog.records] == ["WARNING"] * 3


def test_at_the_cap_it_says_once_that_new_runs_are_refused_and_again_after_it_drained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap = _capacity()
    full = cap.check(1000, 0, 0.0)
    assert full is not None and "is full" in full and "every new run is stopped" in full
    assert cap.check(1000, 0, 1.0) is None
    assert cap.check(999, 0, 2.0) is None  # just under: the 95 % line was said with it
    assert cap.check(300, 0, 3.0) is None  # drained under 40 %: armed again
    assert cap.check(600, 0, 4.0) is not None
    assert "is full" in (cap.check(1000, 0, 5.0) or "")
    assert [r.levelname for r in caplog.records if r.name == "baton.processors.app"] == [
        "ERROR",
        "WARNING",
        "ERROR",
    ]


def test_the_fuller_cap_counts_bytes_too() -> None:
    cap = _capacity()
    line = cap.check(10, int(0.85 * (1 << 30)), 0.0)
    assert line is not None and "holds 85% of what it may" in line
    assert "870 MB of state of max_state_bytes 1,024 MB" in line


def test_the_metrics_serve_the_caps_and_check_them_every_refresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(max_runs=100, max_state_bytes=1 << 20)
    metrics = WorkerMetrics("w1", capacity_of(settings, "w1"))
    metrics.set_state({}, 60, 0, "v1")
    families = {f.name: f for f in metrics.collect()}
    assert families["baton_max_runs"].samples[0].value == 100
    assert families["baton_max_state_bytes"].samples[0].value == 1 << 20
    assert any("holds 60% of what it may" in r.getMessage() for r in caplog.records)


def test_a_check_that_fails_never_ends_the_refresh(caplog: pytest.LogCaptureFixture) -> None:
    metrics = WorkerMetrics("w1", Capacity("w1", 0, 0, 1.0, 1.0))  # division by zero inside
    metrics.set_state({}, 5, 5, "v1")
    assert any("checking the worker's capacity failed" in r.getMessage() for r in caplog.records)
