"""An idle run held compressed in memory reads back as exactly its record; a bad one is refused."""

from __future__ import annotations

import zlib

import orjson
import pytest

from baton.processors.state import RunState
from baton.processors.state_held import (
    MAX_RECORD,
    _header,  # forged held records, with this process's tag
    hold,
    is_held,
    record_of,
    record_size,
)
from tests.helpers import handoff
from tests.unit.test_engine_support import completed
from tests.unit.test_state import _busy_run
from tests.unit.test_state_format import FORMAT_3_ONE_HANDOFF, FORMAT_3_STATE
from tests.unit.test_state_idle import NOW, _record, _store, _Worker

pytestmark = pytest.mark.unit


def _records() -> list[bytes]:
    """A busy run (every field), its tombstone, and records written by the format-3 engine."""
    state = _busy_run().state
    assert state is not None
    return [
        state.to_bytes(),
        state.tombstone(1_800_000_000.0).to_bytes(),
        FORMAT_3_STATE,
        FORMAT_3_ONE_HANDOFF,
    ]


@pytest.mark.parametrize("record", _records(), ids=["busy", "tombstone", "format3", "format3_one"])
def test_a_held_record_reads_back_byte_for_byte_and_as_the_same_state(record: bytes) -> None:
    held = hold(record)
    assert is_held(held) and not is_held(record)
    assert record_of(held) == record and record_size(held) == len(record)
    assert RunState.from_bytes(held) == RunState.from_bytes(record)
    assert record_of(record) is record  # a changelog record is read as it is


def test_a_worker_run_held_takes_under_a_third_of_its_record() -> None:
    w = _Worker(_store())
    w.decide([_record("run_a", 1, handoff("run_a", 1, "research", tenant="default"))], NOW)
    done = completed("run_a-h1", "research", "researcher", 0.25, run_id="run_a")
    w.decide([_record("run_a", 2, done)], NOW)
    record = w.states[b"run_a"].to_bytes()
    w.states.hold_encoded(b"run_a")
    held = w.states._data[b"run_a"]
    assert len(held) * 3 < len(record)
    # the state budget counts what the run takes as its record, held or not
    assert w.states.encoded_size(b"run_a") == len(record)
    assert w.states[b"run_a"].to_bytes() == record


def test_a_record_claiming_to_be_held_by_another_process_is_refused_uninflated() -> None:
    """A writer of the changelog cannot plant a held record (whose rows are not checked)."""
    held = hold(_records()[0])
    planted = held[:1] + bytes(b ^ 0xFF for b in held[1:5]) + held[5:]
    with pytest.raises(ValueError, match="was not held by this process: expected a JSON"):
        RunState.from_bytes(planted)


def test_a_planted_held_record_refuses_its_runs_events_as_unreadable_not_as_a_new_run() -> None:
    w = _Worker(_store())
    w.decide([_record("run_a", 1, handoff("run_a", 1, "research", tenant="default"))], NOW)
    w.states.hold_encoded(b"run_a")
    held = w.states._data[b"run_a"]
    planted = held[:1] + bytes(b ^ 0xFF for b in held[1:5]) + held[5:]  # another tag
    w.states._data[b"run_a"] = planted  # as Faust's recovery would restore it
    out = w.proc.process([_record("run_a", 2, handoff("run_a", 2, "draft", tenant="default"))], NOW)
    assert not out.decisions
    assert [orjson.loads(d.value)["error_kind"] for d in out.dead_letters] == ["state_unreadable"]


def test_a_held_record_stating_more_than_any_record_may_hold_is_refused_unread() -> None:
    forged = _header(0xFFFFFF) + b"\x00" * 10
    with pytest.raises(ValueError, match=f"record of {0xFFFFFF} bytes.*at most {MAX_RECORD}"):
        record_of(forged)
    huge = b"{" + b" " * MAX_RECORD + b"}"
    assert hold(huge) == huge  # held as it is: the sweep never fails on a run


def _forged(stated: int, payload: bytes, tail: bytes = b"") -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, -12)
    return _header(stated) + packer.compress(payload) + packer.flush() + tail


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # a bomb: a few bytes that inflate to 2 MB; never inflated past what it states
        (_forged(1000, b"\x00" * 2_000_000), "inflates to 1000\\+ bytes, not the 1000"),
        (_forged(5000, b"{}"), "inflates to 2\\+ bytes, not the 5000"),
        (_forged(2, b"{}", tail=b"extra"), "not the 2"),
        (_forged(2, b"{}")[:-2], "not the 2"),
        (_header(2) + b"\xff\xff", "does not inflate"),
        (_header(2)[:6], "expected an 8-byte header"),
    ],
    ids=["bomb", "short", "trailing", "truncated", "not_deflate", "no_header"],
)
def test_a_held_record_that_is_not_what_it_states_is_refused(raw: bytes, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        RunState.from_bytes(raw)
