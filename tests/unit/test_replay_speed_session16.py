"""Session 16's replay cuts give the answers they replaced, in either build.

- ``processors.replay._input_event`` reads a recorded input through the compiled
  ``event_fast.fast_parse`` in one call and through ``parse_event`` where that declines: the
  same event (down to each value's type and the fields set) or the same refusal, for random
  and hostile inputs, under the run's own key and another's.
- ``schemas.decision.chain_content`` writes a time as whole microseconds since the epoch by
  int arithmetic: the value ``(t - epoch) // timedelta(microseconds=1)`` gave, for any time
  Python holds, in any zone or none (a chain hash covers it: one microsecond off would break
  every recorded chain).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.processors import replay
from baton.schemas import event_fast, events
from baton.schemas.decision import CHAIN_FIELDS, chain_content
from baton.schemas.event_fast import fast_parse
from baton.schemas.events import _FAST_SPECS, MAX_EVENT_BYTES, EventError, parse_event
from tests.builds import COMPILED, interpreted_only
from tests.unit.test_event_fast_diff import BASES, _assert_identical, hostile_docs, valid_docs

pytestmark = pytest.mark.unit

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture
def fast_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path on for replay's reads, as in the compiled core (where it is on already
    and its Final names cannot be patched); parse_event's own fast path off, so that the
    answers compared with are pydantic's alone."""
    if not COMPILED:
        monkeypatch.setattr(replay, "_FAST_KINDS", dict(_FAST_SPECS))
        monkeypatch.setattr(events, "_FAST", {})


def _answer(read: Any) -> Any:
    try:
        return read()
    except EventError as exc:
        return ("refused", exc.kind, str(exc))


def _same(text: str, key: bytes) -> None:
    fast = _answer(lambda: replay._input_event(text, key))
    kept = dict(events._FAST)
    events._FAST.clear()  # (compiled: the dict parse_event reads; interpreted: off already)
    try:
        slow = _answer(lambda: parse_event(text.encode(), key))
    finally:
        events._FAST.update(kept)
    if isinstance(fast, tuple) or isinstance(slow, tuple):
        assert fast == slow, text
    else:
        _assert_identical(fast, slow)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(hostile_docs() | valid_docs(), st.sampled_from([b"run-1", b"run-2", b"r"]))
def test_a_recorded_input_reads_as_parse_event_reads_it(
    fast_on: None, doc: dict[str, Any], key: bytes
) -> None:
    for text in (json.dumps(doc), orjson.dumps(doc).decode()):
        _same(text, key)


@pytest.mark.parametrize("kind", sorted(BASES))
def test_the_common_inputs_take_the_fast_path_and_another_runs_is_refused(
    fast_on: None, kind: str
) -> None:
    text = orjson.dumps(BASES[kind]).decode()
    event = replay._input_event(text, b"run-1")
    assert event is not None and event.run_id == "run-1"
    _same(text, b"run-1")
    with pytest.raises(EventError) as refused:  # the fast path never skips the key's check
        replay._input_event(text, b"run-2")
    assert refused.value.kind == "key_mismatch"


def test_no_input_is_a_timer_step(fast_on: None) -> None:
    assert replay._input_event(None, b"run-1") is None


@pytest.mark.parametrize(
    "raw",
    [
        b"[1, 2]",
        b'"handoff_requested"',
        b'{"type": 1}',
        b'{"type": "kill_switch", "run_id": "run-1"}',  # a control event: no run event's spec
        b'{"type": "handoff_requested", ',
        b'{"type": "run_finished", "run_id": "run-1", "x": NaN}',
        b'{"type": "run_finished", "run_id": "run-1", "pad": "' + b"x" * MAX_EVENT_BYTES + b'"}',
    ],
)
def test_fast_parse_declines_what_is_no_run_event_it_knows(raw: bytes) -> None:
    assert fast_parse(raw, dict(_FAST_SPECS), MAX_EVENT_BYTES) is None


def test_fast_parse_declines_past_the_size_it_is_given() -> None:
    raw = orjson.dumps(BASES["run_finished"])
    assert fast_parse(raw, dict(_FAST_SPECS), len(raw)) is not None
    assert fast_parse(raw, dict(_FAST_SPECS), len(raw) - 1) is None


@interpreted_only("a compiled event_fast reads _loads from a C static")
def test_an_input_declined_on_its_bytes_is_not_read_as_json_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Non-ASCII or escaped text is declined before the JSON is read: parse_event reads it
    once (a 60 KB non-ASCII event read twice doubled a worker's parse of it: H1's F1)."""
    reads: list[bytes] = []

    def counted(raw: bytes) -> Any:
        reads.append(raw)
        return orjson.loads(raw)

    monkeypatch.setattr(event_fast, "_loads", counted)
    base = BASES["run_finished"]
    for raw in (
        orjson.dumps({**base, "pad": "é" * 30_000}),
        json.dumps({**base, "pad": "é"}).encode(),  # \u00e9
        orjson.dumps({**base, "pad": 'a "quoted" word'}),
    ):
        assert fast_parse(raw, dict(_FAST_SPECS), MAX_EVENT_BYTES) is None
    assert reads == []
    assert fast_parse(orjson.dumps(base), dict(_FAST_SPECS), MAX_EVENT_BYTES) is not None
    assert len(reads) == 1


_times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30, 23, 59, 59, 999999)
)
_zones = st.none() | st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))


def _content_with(at: datetime) -> list[Any]:
    values: list[Any] = [None] * len(CHAIN_FIELDS)
    values[CHAIN_FIELDS.index("decided_at")] = at
    return orjson.loads(chain_content(values))


@settings(max_examples=500, deadline=None)
@given(_times, _zones)
def test_a_time_is_written_as_the_division_wrote_it(naive: datetime, zone: Any) -> None:
    at = naive.replace(tzinfo=zone)
    aware = at if zone is not None else at.replace(tzinfo=UTC)
    micros = (aware - _EPOCH) // timedelta(microseconds=1)
    written = _content_with(at)
    at_i, event_i = CHAIN_FIELDS.index("decided_at"), CHAIN_FIELDS.index("event_time")
    assert written[at_i] == micros
    assert written[event_i] == micros  # a missing event_time is the decided_at


@pytest.mark.parametrize(
    "at",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 11, 30, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=-23, minutes=-59))),
    ],
)
def test_the_edges_of_time_are_written_exactly(at: datetime) -> None:
    assert _content_with(at)[CHAIN_FIELDS.index("decided_at")] == (at - _EPOCH) // timedelta(
        microseconds=1
    )
