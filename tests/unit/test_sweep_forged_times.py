"""A run state whose times the worker cannot trust (a changelog writer's record: a last event at
1e300 or years ahead, an approval expiring after any TTL) still falls due, ages on the worker's
clock and leaves the table; one from far in the past is evicted at once, its stop kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.engine import NO_KILLS
from baton.processors.state import RunState
from baton.processors.sweep import MAX_AHEAD_S, DueIndex
from baton.processors.sweep_step import sweep_due
from baton.schemas.decision import Outcome, Reason
from baton.streams.partitioner import partition_for
from tests.helpers import handoff
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

PARTITIONS = 4
NOW = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
RETENTION_S = 3600.0
TOMBSTONE_S = 86400.0
KEY = b"run_f"


def _sweep(proc: BatchProcessor, due: DueIndex, at: datetime) -> Any:
    every = set(range(PARTITIONS))
    return sweep_due(
        proc, due, at, active=every, ready=every, kills=NO_KILLS, run_retention_s=RETENTION_S,
        tombstone_retention_s=TOMBSTONE_S, limit=100,
    )  # fmt: skip


def _record(event: Any, offset: int = 0) -> InputRecord:
    partition = partition_for(KEY, PARTITIONS)
    return InputRecord("gov.handoff.requests", partition, offset, KEY, event.to_json())


def _forged(policy_keys: dict[str, Any] | None = None, **times: Any) -> bytes:
    """A run that was stopped and spent 3.5 USD, decided by the batch step, then its record
    rewritten with ``times`` (state_wire keys: t0, t, ev) as a changelog writer could."""
    proc = BatchProcessor(policy_with(**(policy_keys or {})), PARTITIONS, {}, chain_key=b"k")
    proc.process([_record(handoff("run_f", 1, "t", event_time=NOW))], NOW)
    record = orjson.loads(proc.states[KEY].to_bytes())
    record.update(times)
    return orjson.dumps(record)


def _restored(raw: bytes, **policy_keys: Any) -> tuple[BatchProcessor, DueIndex]:
    """A worker that restored ``raw`` from the changelog and re-indexed its table at NOW."""
    states: dict[bytes, Any] = {KEY: RunState.from_bytes(raw)}
    proc = BatchProcessor(policy_with(**policy_keys), PARTITIONS, states, chain_key=b"k")
    due = DueIndex(RETENTION_S, TOMBSTONE_S)
    due.rebuild_keys([KEY], NOW.timestamp())
    return proc, due


def _life(proc: BatchProcessor, due: DueIndex, start: datetime, days: int) -> list[datetime]:
    """Sweep once an hour for ``days`` days from ``start``; the times the run changed."""
    changed = []
    for hour in range(24 * days):
        at = start + timedelta(hours=hour)
        if KEY in _sweep(proc, due, at).changed:
            changed.append(at)
        if KEY not in proc.states:
            break
    return changed


@pytest.mark.parametrize(
    "forged",
    [
        {"t": 1e300},
        {"t": NOW.timestamp() + 10 * 365 * 86400},  # finite, ten years ahead
        {"t0": 1e300, "t": 1e300},
        {"t": 1.8446744073709552e19},  # a u64's worth of seconds
    ],
)
def test_a_run_whose_last_event_is_far_ahead_ages_on_the_workers_clock_and_leaves(
    forged: dict[str, float],
) -> None:
    proc, due = _restored(_forged(**forged))
    out = _sweep(proc, due, NOW)
    state = proc.states[KEY]
    assert state.last_event_at == NOW.timestamp() and state.started_at <= NOW.timestamp()
    assert out.encoded[KEY] == state.to_bytes()  # the record holds the worker's time now
    assert orjson.loads(out.encoded[KEY])["t"] == NOW.timestamp()
    changed = _life(proc, due, NOW + timedelta(minutes=1), days=3)
    # a tombstone after the retention, forgotten after the tombstone retention
    assert len(changed) == 2 and KEY not in proc.states
    assert changed[0] - NOW <= timedelta(seconds=RETENTION_S + 3600)


def test_without_the_bound_a_last_event_at_1e300_never_fell_due() -> None:
    """What the start commit did (the reason for MAX_AHEAD_S): the run's due time is past
    every second a sweep reaches, so it is never looked at, and never leaves."""
    state = RunState.from_bytes(_forged(t=1e300))
    due = DueIndex(RETENTION_S, TOMBSTONE_S)
    due.touch(KEY, state)  # no sweep has told the index its clock yet: unbounded
    assert list(due.pop_due(NOW.timestamp() + 100 * 365 * 86400.0)) == []


def test_a_run_decided_with_a_forged_time_is_due_at_the_next_sweep() -> None:
    """An event reaches the run before the sweep does: the engine keeps the later time (a
    last event never goes back), the batch writes it, and the index makes the run due at
    once instead of in its bucket of 1e300."""
    proc, due = _restored(_forged(t=1e300))
    assert list(due.pop_due(NOW.timestamp())) == [KEY]  # taken, not swept: the clock known
    out = proc.process([_record(handoff("run_f", 2, "t2", event_time=NOW), 1)], NOW)
    assert proc.states[KEY].last_event_at == 1e300
    for key, (_p, state) in out.changed.items():
        due.touch(key, state)
    assert list(due.pop_due(NOW.timestamp() + 1)) == [KEY]


def test_a_time_ahead_by_less_than_the_bound_is_taken_at_its_word() -> None:
    """Clocks of two workers differ by seconds: a run written by one a little ahead is not
    rewritten by the next owner's sweep."""
    ahead = NOW.timestamp() + MAX_AHEAD_S - 60
    proc, due = _restored(_forged(t=ahead))
    assert not _sweep(proc, due, NOW).changed
    assert proc.states[KEY].last_event_at == ahead


def test_a_run_whose_last_event_is_far_in_the_past_is_evicted_at_once_and_keeps_its_stop() -> None:
    raw = _forged({"max_handoffs": 0}, t=-1e300)
    proc, due = _restored(raw, max_handoffs=0)
    assert RunState.from_bytes(raw).stopped == Reason.HANDOFF_BUDGET_EXCEEDED
    _sweep(proc, due, NOW)
    tomb = proc.states[KEY]
    assert tomb.evicted_at == NOW.timestamp() and tomb.stopped == Reason.HANDOFF_BUDGET_EXCEEDED
    late = proc.process([_record(handoff("run_f", 2, "t2", event_time=NOW), 1)], NOW)
    [(_, d)] = late.decisions
    assert (d.outcome, d.reason) == (Outcome.STOP, Reason.HANDOFF_BUDGET_EXCEEDED)
    # forgotten a tombstone retention after its eviction, not kept for good
    _sweep(proc, due, NOW + timedelta(seconds=TOMBSTONE_S + 2))
    assert KEY not in proc.states


def test_an_approval_expiring_after_any_ttl_expires_at_the_next_sweep_as_a_stop() -> None:
    gated = {"require_approval_for": ["billing.*"]}
    proc = BatchProcessor(policy_with(**gated), PARTITIONS, {}, chain_key=b"k")
    ask = handoff("run_f", 1, "t", action="billing.refund.create", event_time=NOW)
    proc.process([_record(ask)], NOW)
    record = orjson.loads(proc.states[KEY].to_bytes())
    record["pend"][0][2] = 1e300  # expires_at
    proc, due = _restored(orjson.dumps(record), **gated)
    out = _sweep(proc, due, NOW)
    [(_, stop)] = out.decisions
    assert (stop.outcome, stop.reason) == (Outcome.STOP, Reason.APPROVAL_EXPIRED)
    assert not proc.states[KEY].pending
    assert len(_life(proc, due, NOW + timedelta(minutes=1), days=3)) == 2  # and it leaves


def test_a_pending_approval_past_the_run_retention_is_not_looked_at_every_second() -> None:
    """An approval TTL longer than the run retention kept the run due every second until it
    expired (the run cannot leave while it waits): it is due at its expiry."""
    gated = {"require_approval_for": ["billing.*"]}
    proc = BatchProcessor(policy_with(**gated), PARTITIONS, {}, chain_key=b"k")
    ask = handoff("run_f", 1, "t", action="billing.refund.create", event_time=NOW)
    proc.process([_record(ask)], NOW)
    record = orjson.loads(proc.states[KEY].to_bytes())
    expires = NOW.timestamp() + 3 * RETENTION_S
    record["pend"][0][2] = expires
    proc, due = _restored(orjson.dumps(record), **gated)
    _sweep(proc, due, NOW)
    looked = 0
    for s in range(int(RETENTION_S) + 5, int(RETENTION_S) + 65):
        looked += len(list(due.pop_due(NOW.timestamp() + s)))
    assert looked == 0
    assert list(due.pop_due(expires + 1)) == [KEY]
