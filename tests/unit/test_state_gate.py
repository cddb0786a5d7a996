"""The state gate: a restore takes only the workers' own newest changelog record of a run
(processors/state_gate.py)."""

from __future__ import annotations

import orjson
import pytest

from baton.processors.faust_adapter import RunStore
from baton.processors.state import RunState
from baton.processors.state_gate import NotTaken, StateGate, refusal_of, state_mac
from baton.processors.state_held import hold
from baton.schemas.record_mac import RecordMac

pytestmark = pytest.mark.unit

KEY = b"k" * 32
MAC = state_mac(KEY)
assert MAC is not None


def _run(spent: float, copies: int = 1) -> RunState:
    state = RunState.new("run-1", "default", 1_000.0)
    for _ in range(copies):
        state = state.copy()
    state.spent_usd = spent
    return state


def _record(state: RunState) -> bytes:
    return MAC.marked(state.to_bytes())


def _restored(*values: bytes | None, held: object = None) -> tuple[object, NotTaken]:
    gate, notes = StateGate([KEY]), NotTaken()
    for offset, value in enumerate(values):
        held = gate.admit(value, held, f"0@{offset}", notes)
    return held, notes


def test_the_workers_records_are_taken_newest_last_and_seq_goes_on_from_them() -> None:
    first, second = _run(1.0), _run(9.0, copies=2)
    held, notes = _restored(_record(first), _record(second))
    assert held == _record(second) and notes.count == 0
    state = RunStore.__new__(RunStore)  # (get's decoding only)
    state._data, state._revived = {b"run-1": held}, []
    restored = state.get(b"run-1")
    assert restored.spent_usd == 9.0 and restored.seq == second.seq == 1_000_002  # (ms + 2)
    assert restored.copy().seq == 1_000_003  # the next record is newer than every one before


def test_a_forged_record_after_the_workers_is_not_taken() -> None:
    genuine = _record(_run(9.0))
    doc = orjson.loads(genuine)
    doc["usd"], doc["sq"] = 0.0, 99  # the budget given back, a seq far ahead
    unmarked = orjson.dumps(doc)
    doc["sm"] = "0" * 32
    wrong_mac = orjson.dumps(doc)
    other_key = state_mac(b"x" * 32).marked(_run(0.0, copies=5).to_bytes())  # type: ignore[union-attr]
    audit_mac = RecordMac(KEY).marked(_run(0.0, copies=5).to_bytes())  # the decisions' MAC
    for forged in (unmarked, wrong_mac, other_key, audit_mac, b"", b"\x01\x00garbage"):
        held, notes = _restored(genuine, forged)
        assert held == genuine, forged
        assert notes.count == 1 and "no workers' state MAC" in notes.first[0]


def test_an_older_record_written_again_is_not_taken_the_same_one_is() -> None:
    old, new = _record(_run(1.0)), _record(_run(9.0, copies=3))
    held, notes = _restored(old, new, old)
    assert held == new and notes.count == 1 and "older record" in notes.first[0]
    assert _restored(old, new, new)[0] == new


def test_a_forged_first_record_refuses_the_run_until_the_workers_write_one() -> None:
    forged = orjson.dumps(orjson.loads(_run(0.0).to_bytes()))  # no MAC
    held, notes = _restored(forged)
    assert isinstance(held, bytes) and notes.count == 1
    why = refusal_of(held)
    assert why is not None and "0@0" in why and "state MAC" in why
    store = RunStore.__new__(RunStore)
    store._data, store._revived = {b"run-1": held}, []
    with pytest.raises(ValueError, match="the restore refused the run: its changelog record"):
        store.get(b"run-1")
    assert _restored(forged, None)[0] == held  # a deletion does not lift it
    assert _restored(forged, forged)[0] == held
    assert _restored(forged, _record(_run(3.0)))[0] == _record(_run(3.0))


def test_a_deletion_is_taken_only_after_a_tombstone() -> None:
    live = _run(9.0)
    held, notes = _restored(_record(live), None)
    assert held == _record(live) and "deletion of a live run" in notes.first[0]
    tomb = live.tombstone(2_000.0)
    assert tomb.seq == live.seq + 1
    assert _restored(_record(live), _record(tomb), None)[0] is None
    assert _restored(None)[0] is None  # nothing held: nothing to delete
    assert _restored(None, held=tomb)[0] is None
    assert _restored(None, held=live)[0] is live


def test_a_run_held_in_memory_keeps_its_newer_state_over_its_own_older_records() -> None:
    """A partition this worker kept: Faust's recovery reads its own records again, the
    newest maybe still in flight. What it holds (decoded, or held compressed) stays."""
    older, now = _run(1.0), _run(9.0, copies=4)
    for held in (now, hold(now.to_bytes())):
        got, notes = _restored(_record(older), held=held)
        assert got is held and notes.count == 1
    assert _restored(_record(now), held=older)[0] == _record(now)


def test_the_records_a_worker_writes_end_with_their_seq_and_state_mac() -> None:
    record = _record(_run(9.0, copies=7))
    assert record.endswith(b'"sq":1000007,"sm":"' + record[-34:-2] + b'"}')
    tomb = _run(9.0).tombstone(2_000.0)
    assert orjson.loads(_record(tomb))["sq"] == 1_000_002
    assert RunState.from_bytes(orjson.dumps({**orjson.loads(_record(tomb)), "sq": 5})).seq == 5
    with pytest.raises(ValueError, match="run state key sq: expected a sequence number"):
        RunState.from_bytes(orjson.dumps({**orjson.loads(_record(tomb)), "sq": "5"}))


def test_a_later_life_of_the_run_id_is_newer_than_every_record_of_the_earlier_one() -> None:
    """The sweep forgets a tombstone after weeks and the run id may start again: a record of
    the earlier life written again must not be taken over the new life's (its budget)."""
    earlier = RunState.new("run-1", "default", 1_000.0)
    for _ in range(5_000):  # a long earlier life
        earlier = earlier.copy()
    tomb = earlier.tombstone(1_500.0)
    later = RunState.new("run-1", "default", 1_000.0 + 14 * 86_400)  # two weeks on
    held, notes = _restored(_record(earlier), _record(tomb), None, _record(later), _record(earlier))
    assert held == _record(later) and "older record" in notes.first[0]
    assert RunState.new("r", "t", float("inf")).seq == RunState.new("r", "t", -1.0).seq == 0


def test_a_gate_needs_a_key() -> None:
    with pytest.raises(ValueError, match="needs a key"):
        StateGate([b""])
    assert state_mac(b"") is None
