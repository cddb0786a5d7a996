"""The worker's sweep without Kafka: what is due is expired or evicted, nothing else is touched."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.engine import NO_KILLS
from baton.processors.fencing import check_generation
from baton.processors.state import RunState
from baton.processors.sweep import DueIndex
from baton.processors.sweep_step import sweep_due
from baton.schemas.decision import Outcome, Reason
from baton.streams.partitioner import partition_for
from tests.helpers import handoff
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

PARTITIONS = 4
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
RETENTION_S = 3600.0
TOMBSTONE_S = 86400.0


def _sweep(proc: BatchProcessor, due: DueIndex, at: datetime, **kw: Any) -> Any:
    every = set(range(PARTITIONS))
    return sweep_due(
        proc,
        due,
        at,
        active=kw.pop("active", every),
        ready=kw.pop("ready", every),
        kills=NO_KILLS,
        run_retention_s=RETENTION_S,
        tombstone_retention_s=TOMBSTONE_S,
        limit=kw.pop("limit", 100),
    )


def _idle_runs(*runs: str) -> tuple[BatchProcessor, DueIndex]:
    states: dict[bytes, RunState] = {
        r.encode(): RunState.new(r, "acme", NOW.timestamp()) for r in runs
    }
    proc = BatchProcessor(policy_with(), PARTITIONS, states)
    due = DueIndex(RETENTION_S, TOMBSTONE_S)
    for key, state in states.items():
        due.touch(key, state)
    return proc, due


def test_an_idle_run_becomes_a_tombstone_and_nothing_is_due_before_its_time() -> None:
    proc, due = _idle_runs("run_a")
    assert not _sweep(proc, due, NOW + timedelta(seconds=RETENTION_S - 1)).changed
    out = _sweep(proc, due, NOW + timedelta(seconds=RETENTION_S + 1))
    partition, kept = out.changed[b"run_a"]
    assert partition == partition_for(b"run_a", PARTITIONS)
    assert kept is proc.states[b"run_a"] and kept.evicted_at is not None
    assert out.encoded[b"run_a"] == kept.to_bytes()
    later = NOW + timedelta(seconds=RETENTION_S + TOMBSTONE_S + 2)
    assert _sweep(proc, due, later).changed[b"run_a"] == (partition, None)
    assert b"run_a" not in proc.states


def test_a_run_of_a_partition_with_a_backlog_waits_for_the_next_sweep() -> None:
    proc, due = _idle_runs("run_a")
    at = NOW + timedelta(seconds=RETENTION_S + 1)
    assert not _sweep(proc, due, at, ready=set()).changed
    assert proc.states[b"run_a"].evicted_at is None
    assert not _sweep(proc, due, at + timedelta(seconds=0.5)).changed  # back in 1 s
    assert b"run_a" in _sweep(proc, due, at + timedelta(seconds=1)).changed


def test_a_run_of_a_revoked_partition_is_left_to_its_new_owner() -> None:
    proc, due = _idle_runs("run_a")
    home = partition_for(b"run_a", PARTITIONS)
    out = _sweep(proc, due, NOW + timedelta(seconds=RETENTION_S + 1), active={home + 1})
    assert not out.changed and proc.states[b"run_a"].evicted_at is None
    assert len(due) == 0  # not put back: the new owner indexes it


def test_an_unreadable_state_is_logged_and_the_sweep_goes_on(caplog) -> None:
    proc, due = _idle_runs("run_a", "run_b")

    class Broken(dict[bytes, RunState]):
        def get(self, key: bytes, default: Any = None) -> Any:
            if key == b"run_a":
                raise ValueError("not a run state")
            return super().get(key, default)

    proc.states = Broken(proc.states)
    with caplog.at_level(logging.ERROR):
        out = _sweep(proc, due, NOW + timedelta(seconds=RETENTION_S + 1))
    assert list(out.changed) == [b"run_b"]
    assert "run b'run_a': stored state cannot be read" in caplog.text


def test_an_approval_nobody_answered_expires_as_a_linked_stop() -> None:
    proc = BatchProcessor(
        policy_with(require_approval_for=["billing.*"]), PARTITIONS, {}, chain_key=b"k"
    )
    ev = handoff("run_a", 1, "t", action="billing.refund.create", event_time=NOW)
    record = InputRecord(
        "gov.handoff.requests", partition_for(b"run_a", PARTITIONS), 0, b"run_a", ev.to_json()
    )
    asked = proc.process([record], NOW)
    assert [d.outcome for _, d in asked.decisions] == [Outcome.APPROVAL_REQUIRED]
    due = DueIndex(RETENTION_S, TOMBSTONE_S)
    due.touch(b"run_a", proc.states[b"run_a"])
    out = _sweep(proc, due, NOW + timedelta(days=1))
    [(_, stop)] = out.decisions
    assert (stop.outcome, stop.reason) == (Outcome.STOP, Reason.APPROVAL_EXPIRED)
    assert stop.chain_hash  # linked into the run's hash chain like a batch's decisions
    assert not proc.states[b"run_a"].pending


def test_a_batch_fetched_in_an_older_generation_writes_no_state() -> None:
    check_generation(7, 7)
    with pytest.raises(RuntimeError, match="generation changed from 7 to 8"):
        check_generation(7, 8)


def test_a_limited_pop_leaves_the_rest_of_a_second_due_for_the_next_sweep() -> None:
    due = DueIndex(RETENTION_S, TOMBSTONE_S)
    keys = [f"run_{i}".encode() for i in range(10)]
    for key in keys:
        due.push(key, 100.25)  # one second's bucket: due at 101 (never early)
    assert list(due.pop_due(100.9)) == []
    due.push(keys[4], 50.0)  # due earlier now: its old slot is stale
    assert list(due.pop_due(101.0, limit=3)) == [keys[4], *keys[:2]]
    assert list(due.pop_due(101.0, limit=3)) == keys[2:4] + keys[5:6]
    due.touch(keys[6], None)  # left the table: never popped
    assert list(due.pop_due(101.0)) == keys[7:]
    assert len(due) == 0
