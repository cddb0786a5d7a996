"""Idle runs held as their changelog record by the sweep, decided on exactly as if decoded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.engine import NO_KILLS
from baton.processors.faust_adapter import RunStore
from baton.processors.state import RunState
from baton.processors.sweep import HOLD_IDLE_S, DueIndex
from baton.processors.sweep_step import sweep_due
from baton.streams.partitioner import partition_for
from tests.helpers import handoff
from tests.unit.test_engine_support import completed, policy_with

pytestmark = pytest.mark.unit

PARTITIONS = 4
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TOPIC = "gov.handoff.requests"


def _store() -> RunStore:
    table = SimpleNamespace(data=SimpleNamespace(data={}, _key_partition={}))
    return RunStore(table, PARTITIONS)


def _record(run: str, offset: int, event: Any) -> InputRecord:
    key = run.encode()
    return InputRecord(TOPIC, partition_for(key, PARTITIONS), offset, key, event.to_json())


class _Worker:
    """The batch step, the due index and the sweep, as the worker wires them."""

    def __init__(self, states: Any) -> None:
        self.states = states
        self.proc = BatchProcessor(policy_with(), PARTITIONS, states, "w-1", chain_key=b"k")
        self.due = DueIndex(3600.0, 86400.0)

    def decide(self, records: list[InputRecord], at: datetime) -> list[bytes]:
        out = self.proc.process(records, at)
        for key, (_partition, state) in out.changed.items():
            self.due.touch(key, state)
        return [d.to_json() for _, d in out.decisions]

    def sweep(self, at: datetime) -> None:
        every = set(range(PARTITIONS))
        sweep_due(
            self.proc, self.due, at, active=every, ready=every, kills=NO_KILLS,
            run_retention_s=3600.0, tombstone_retention_s=86400.0, limit=100,
        )  # fmt: skip


def test_an_idle_run_is_held_as_its_record_and_decided_on_as_if_it_never_was() -> None:
    held, plain = _Worker(_store()), _Worker({})
    first = [
        _record("run_a", 1, handoff("run_a", 1, "research", tenant="default")),
        _record("run_b", 2, handoff("run_b", 1, "research", tenant="default")),
    ]
    later = NOW + timedelta(seconds=HOLD_IDLE_S - 1)
    again = [_record("run_b", 3, handoff("run_b", 2, "draft", tenant="default"))]
    for w in (held, plain):
        assert w.decide(first, NOW)
        w.sweep(later)
        w.decide(again, later)
    data = held.states._data
    assert not any(type(v) is bytes for v in data.values())  # nothing idle long enough yet

    held.sweep(NOW + timedelta(seconds=HOLD_IDLE_S + 1))
    assert type(data[b"run_a"]) is bytes and isinstance(data[b"run_b"], RunState)
    assert RunState.from_bytes(data[b"run_a"]) == plain.states[b"run_a"]

    # its next events: a redelivered handoff (answered from the held replies), a completion
    at = NOW + timedelta(seconds=HOLD_IDLE_S + 5)
    done = completed("run_a-h1", "research", "researcher", 0.25, run_id="run_a")
    events = [first[0], _record("run_a", 4, done)]
    assert held.decide(events, at) == plain.decide(events, at)
    assert isinstance(data[b"run_a"], RunState)  # decoded on its read, held again when idle
    assert held.states[b"run_a"].to_bytes() == plain.states[b"run_a"].to_bytes()


def test_holding_takes_the_least_recently_touched_runs_a_bounded_number_at_a_time() -> None:
    due = DueIndex(3600.0, 86400.0, hold_idle_s=10.0)
    decoded: dict[bytes, RunState] = {}  # the store's decoded runs (held ones are bytes)

    def touch(i: int, at: float) -> None:
        key = f"run_{i}".encode()
        decoded[key] = RunState.new(f"run_{i}", "acme", at)
        due.touch(key, decoded[key])

    def idle_since(key: bytes) -> float | None:
        state = decoded.get(key)
        return None if state is None else state.last_event_at

    for i in range(5):
        touch(i, float(i))
    touch(0, 4.0)  # touched again: the newest (its first bucket is stale now)
    assert due.idle_keys(13.5, 2, idle_since) == [b"run_1", b"run_2"]
    assert due.idle_keys(13.5, 10, idle_since) == [b"run_3"]  # run_4, run_0 at 4.0: not yet
    del decoded[b"run_4"]  # held since, or gone from the table: never held (again)
    assert due.idle_keys(100.0, 10, idle_since) == [b"run_0"]
    assert due.idle_keys(1000.0, 10, idle_since) == []
    touch(5, 20.5)  # idle from its second rounded up: never held early
    assert due.idle_keys(30.9, 10, idle_since) == []
    assert due.idle_keys(31.0, 10, idle_since) == [b"run_5"]


def test_the_index_takes_a_restored_runs_times_whatever_they_are() -> None:
    """A state read from the changelog carries the times its record says: infinite, NaN
    or far-off ones are indexed (never due, or due now), never an exception in the sweep."""
    due = DueIndex(3600.0, 86400.0, hold_idle_s=10.0)
    weird = {b"inf": float("inf"), b"nan": float("nan"), b"past": -1e300, b"far": 1e300}
    for key, t in weird.items():
        due.touch(key, RunState.new(key.decode(), "acme", t))
    assert len(due) == 4
    assert list(due.pop_due(0.0)) == [b"past"]  # due long ago: looked at now
    assert list(due.pop_due(1e18)) == []  # the others are never due
    assert due.idle_keys(1e18, 10, lambda k: weird.get(k)) == [b"past"]


def test_restored_runs_the_sweep_reads_after_a_rebalance_are_held_again_in_the_same_sweep() -> None:
    w = _Worker(_store())
    w.decide([_record(f"run_{i}", i, handoff(f"run_{i}", 1, "t")) for i in range(3)], NOW)
    data = w.states._data
    for key in list(data):
        data[key] = data[key].to_bytes()  # restored from the changelog
    at = NOW + timedelta(seconds=HOLD_IDLE_S + 1)
    w.due.rebuild_keys(list(data), at.timestamp())  # the new assignment: each due once
    w.sweep(at)  # reads (decodes) each to see what is due
    assert all(type(v) is bytes for v in data.values())


def test_the_hold_time_is_a_setting_the_sweep_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """BATON_HOLD_IDLE_S sets how long a run waits decoded; the worker gives it to its index."""
    from baton.schemas.settings import Settings

    monkeypatch.setenv("BATON_HOLD_IDLE_S", "5")
    assert Settings().hold_idle_s == 5.0
    w = _Worker(_store())
    w.due = DueIndex(3600.0, 86400.0, Settings().hold_idle_s)
    w.decide([_record("run_a", 1, handoff("run_a", 1, "research", tenant="default"))], NOW)
    w.sweep(NOW + timedelta(seconds=4))
    assert isinstance(w.states._data[b"run_a"], RunState)
    w.sweep(NOW + timedelta(seconds=6))
    assert type(w.states._data[b"run_a"]) is bytes
    monkeypatch.setenv("BATON_HOLD_IDLE_S", "0")
    with pytest.raises(ValueError, match="hold_idle_s"):
        Settings()
