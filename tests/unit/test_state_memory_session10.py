"""What a decoded run holds since the tenth session: its kept replies' bundle with the decision
ids and chain links as bytes (processors/state_bundle.py), its fresh dedup keys joined in one
text (``FreshKeys``), and its kept replies' slots naming their bundle entries instead of
holding the keys' strings; each read back as before, byte for byte."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.processors.state import RECENT_REPLIES, RunState
from baton.processors.state_bundle import (
    BUNDLE,
    bundle,
    bundle_appended,
    bundle_entries,
    bundle_json,
    bundle_keys,
    entry_template,
    filled,
)
from baton.processors.state_compact import FreshKeys, fresh_added, fresh_of
from baton.schemas.decision import DECISION_FIELDS

pytestmark = pytest.mark.unit

HEX = "0123456789abcdef" * 2
ROW = len(DECISION_FIELDS)
ID, PREV, HASH = (DECISION_FIELDS.index(c) for c in ("decision_id", "chain_prev", "chain_hash"))


def _row(text: str, dec: str = HEX, prev: str = "", link: str = HEX[::-1]) -> list[object]:
    row: list[object] = [None] * ROW
    row[ID], row[PREV], row[HASH] = dec, prev, link
    row[1], row[2], row[3] = text, "run-1", "acme"
    return row


def test_an_entrys_ids_are_held_as_their_bytes_and_given_back_as_their_text() -> None:
    rows = [_row("req-1"), _row("req-2", prev=HEX[::-1], link="f" * 32)]
    template, ids = entry_template("h:req-1", rows)
    assert len(ids) == 16 * 5 and HEX.encode() not in template  # "" stays in the text
    assert filled(template, ids) == orjson.dumps(["h:req-1", rows])


@pytest.mark.parametrize(
    "odd",
    [
        HEX.upper(),  # capitals: fromhex takes them, the text would change
        HEX[:31] + " ",  # a space
        HEX[:31] + "g",  # not hex
        HEX[:30],  # short
        "\x00",  # the mark itself
        7,
        None,
    ],
)
def test_an_id_that_is_not_the_engines_stays_in_the_text(odd: object) -> None:
    rows = [_row("req-1", dec=odd)]  # type: ignore[arg-type]
    template, ids = entry_template("h:x", rows)
    assert filled(template, ids) == orjson.dumps(["h:x", rows])


@given(
    texts=st.lists(st.text(max_size=12), min_size=1, max_size=4),
    key=st.text(max_size=12),
)
def test_client_text_with_percents_quotes_and_marks_comes_back_byte_for_byte(
    texts: list[str], key: str
) -> None:
    """A reason, a task id or a key holding ``%``, ``%s``, ``"`` or NUL (the mark's text,
    ``"\\u0000"`` after an escaped quote): the entry's JSON is the same bytes."""
    rows = [_row(t + '"\x00') for t in texts] + [_row("%s%%"), _row("\x00")]
    template, ids = entry_template(key, rows)
    assert filled(template, ids) == orjson.dumps([key, rows])
    packed = bundle([template], [ids])
    assert bundle_entries(packed) == [orjson.dumps([key, rows])]
    assert bundle_keys(packed) == [key]


def test_a_bundle_drops_its_oldest_entries_and_appends_with_their_ids() -> None:
    entries = [entry_template(f"h:{i}%", [_row(f"r{i}", dec=f"{i:032x}")]) for i in range(4)]
    packed = bundle([t for t, _ in entries], [i for _, i in entries])
    new = [entry_template("c:9", [_row("r9", dec="9" * 32)])]
    made = bundle_appended(packed, 2, "h:2%", [t for t, _ in new], [i for _, i in new])
    assert made is not None
    again, json = made
    want = [orjson.dumps([f"h:{i}%", [_row(f"r{i}", dec=f"{i:032x}")]]) for i in (2, 3)]
    want.append(orjson.dumps(["c:9", [_row("r9", dec="9" * 32)]]))
    assert again[0] == BUNDLE and bundle_entries(again) == want
    assert json == bundle_json(again) == b"[" + b",".join(want) + b"]"
    # its first kept entry is not the oldest key's (or not the oldest entry's place): rebuilt
    assert bundle_appended(packed, 2, "h:1%", [], []) is None
    assert bundle_appended(packed, 2, 1, [], []) is None
    assert bundle_appended(packed, 2, 2, [], []) is not None


def test_fresh_keys_joined_read_like_the_dict_they_stand_for() -> None:
    marks = {"h:r1": b"\x01" * 8, "c:r1": b"\x02" * 8, "h:r10": None, "h:\x00é%": b"\x03" * 8}
    fresh = fresh_of(marks)
    assert type(fresh) is FreshKeys and fresh.keys() == list(marks) and len(fresh) == 4
    assert all(k in fresh for k in marks)
    # a key that is part of another, or spans two: not held
    for other in ("h:r", "r1", "1c:r1", "h:r1c", "h:r100", "", "c:r1h:r10", 7, None):
        assert other not in fresh
    assert fresh.index("h:r10") == 2 and fresh.digests == (
        *[b"\x01" * 8, b"\x02" * 8],
        None,
        b"\x03" * 8,
    )
    assert fresh_added(fresh, 17, None) == {**marks, 17: None}  # a record's odd key: a dict


def test_fresh_keys_longer_than_their_ends_can_say_are_a_dict() -> None:
    long = "h:" + "x" * 40_000
    fresh = fresh_of({long: None})
    assert type(fresh) is FreshKeys
    assert type(fresh_added(fresh, long + "y", None)) is dict  # 80,003 characters joined


def test_a_long_runs_kept_replies_hold_no_key_strings_and_answer_retries_alike() -> None:
    from baton.processors.chain import link
    from tests.unit.test_engine_support import Run, handoff, policy_with

    run = Run(policy_with(shared_max_usd=100))
    sent = []
    for i in range(RECENT_REPLIES + 2):
        event = handoff(f"r{i}", f"t{i}", "planner", "coder", estimated_usd=0.1)
        answer = run.send(event)
        link(run.state, answer, b"key")  # type: ignore[arg-type]
        assert run.state is not None
        raw = run.state.to_bytes()
        sent.append((event, answer))
    state = run.state
    assert state is not None
    assert all(type(k) is int for k in state.recent[::2])  # entries' places, not strings
    assert state.recent_keys() == [f"h:r{i}" for i in range(2, RECENT_REPLIES + 2)]
    assert type(state.fresh) is FreshKeys
    back = RunState.from_bytes(raw)
    assert back == state and back.to_bytes() == raw
    for held in (state, back):
        for event, answer in sent[2:]:
            again = held.replies(f"h:{event.request_id}")
            assert again is not None
            assert [d.to_json() for d in again] == [d.to_json() for d in answer]
        assert held.replies("h:r0") is None and held.has_seen("h:r0")
    assert state.to_bytes() == raw  # nothing new: the same record


def test_a_key_remembered_again_gets_its_text_back_in_its_slot() -> None:
    state = RunState.new("run-k", "acme", 0.0)
    state.recent = ("h:a", bundle([orjson.dumps(["h:a", [[1]]])]))
    state.recent = (0, state.recent[1])
    state.fresh = fresh_of({"h:a": None})
    state.marks = 1
    state.remember("h:a", [])  # type: ignore[arg-type]
    assert state.recent[0] == "h:a" and state.recent_keys() == ["h:a"]


def test_a_records_int_key_is_never_read_from_a_bundle() -> None:
    """A writer of the changelog's ``rec`` entry keyed 0: held with its rows' JSON, read as
    the key it is, written back the same."""
    state = RunState.new("run-i", "acme", 0.0)
    wire = state.to_wire()
    rows = [_row("x")]
    rows[0][DECISION_FIELDS.index("phase")] = "pre_handoff"
    wire["rec"] = [[0, []]]
    forged = RunState.from_wire(wire)
    assert forged.recent_keys() == [0]
    assert orjson.loads(forged.to_bytes())["rec"] == [[0, []]]
