"""Session 14 (H6): attacks on the compiled core's fast event parse (``schemas.event_fast``).

F1: the compiled ``fast_event`` takes ``bytes`` only: a bytearray, memoryview or str event
raised a TypeError out of ``parse_event`` (never anything but EventError) where pydantic alone
reads it. F2: an event of thousands of ignored keys cost the fast path O(keys) (~50x pydantic's
O(fields) at 64 KB): it is now declined. The fast path is forced on here (interpreted, it is
off); tests/integration/test_compiled_core.py runs this file against the compiled build."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import baton.schemas.events as events
from baton.schemas.event_fast import fast_event
from baton.schemas.events import EventError, HandoffRequested, parse_event

pytestmark = pytest.mark.unit

RUN_FINISHED = (
    b'{"type":"run_finished","run_id":"run-1","tenant":"acme",'
    b'"event_time":"2026-03-01T09:00:00+00:00"}'
)
HANDOFF: dict[str, Any] = {
    "type": "handoff_requested",
    "request_id": "run-1/h1",
    "run_id": "run-1",
    "task_id": "plan",
    "from_agent": "orchestrator",
    "to_agent": "planner",
    "tools": ["search"],
    "estimated_usd": 3.0,
    "estimated_tool_calls": 4,
    "event_time": "2026-03-01T09:00:00+00:00",
}


@pytest.fixture
def fast_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path on, as in the compiled core (interpreted, _FAST is empty)."""
    monkeypatch.setattr(events, "_FAST", dict(events._FAST_SPECS))


def _answer(raw: Any) -> Any:
    try:
        event = parse_event(raw)
    except EventError as exc:
        return ("EventError", exc.kind, str(exc))
    except Exception as exc:
        return (type(exc).__name__, str(exc))
    return (type(event).__name__, event.model_dump(), sorted(event.model_fields_set))


@pytest.mark.parametrize("wrap", [bytearray, memoryview, bytes.decode])
def test_f1_parse_event_takes_any_buffer_orjson_takes(
    wrap: Any, fast_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F1: a bytearray / memoryview / str event gets pydantic's answer (an event or an
    EventError), never a TypeError/AttributeError from the fast path's bytes-only signature."""
    with_fast = _answer(wrap(RUN_FINISHED))
    monkeypatch.setattr(events, "_FAST", {})
    assert with_fast == _answer(wrap(RUN_FINISHED))


def test_f2_mostly_unknown_keys_are_left_to_pydantic() -> None:
    """F2: an event of many unknown keys is declined, so its cost follows pydantic's, and
    refused (session 27: an unknown key is refused, never dropped), naming three of them."""
    doc = dict(HANDOFF)
    spec = events._FAST_SPECS["handoff_requested"]
    fields = len(HandoffRequested.model_fields)
    doc.update({f"k{i}": 0 for i in range(2 * fields)})
    raw = orjson.dumps(doc)
    assert fast_event(raw, orjson.loads(raw), spec) is None
    with pytest.raises(
        EventError, match=rf"unknown fields 'k0', 'k1', 'k2' and {2 * fields - 3} more"
    ):
        parse_event(raw)
    few = dict(HANDOFF, k0=0)  # one extra key: declined too, and refused
    raw = orjson.dumps(few)
    assert fast_event(raw, orjson.loads(raw), spec) is None
    with pytest.raises(EventError, match="unknown field 'k0'"):
        parse_event(raw)
