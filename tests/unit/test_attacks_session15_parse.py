"""Session 15 (H5): an event time's fast form (``schemas.event_times.event_time_from``, and
``schemas.event_fast`` in the compiled core) took any text ``datetime.fromisoformat`` reads
whose length and a few characters matched Baton's own form, so ISO week dates and basic
(colon-less) times that pydantic refuses were accepted: ``2026-W09-1T09:00:00+00:00`` was
decided as 2026-02-23. The fast form is now exactly Baton's (``YYYY-MM-DDTHH:MM:SS``, six
digits of microseconds or none, ``+00:00``); anything else is pydantic's to read or refuse.
tests/integration/test_compiled_core.py can run this file against the compiled build."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

import baton.schemas.events as events
from baton.schemas.events import EventError, parse_event

pytestmark = pytest.mark.unit

_PYDANTIC = TypeAdapter(datetime)

#: each read by datetime.fromisoformat (Python >= 3.11), each refused by pydantic
NOT_BATONS_FORM = [
    "2026-W09-1T09:00:00+00:00",  # an ISO week date: 2026-02-23
    "2026-W09-1T09:00:00.123456+00:00",
    "2026-03-01T090000.1+00:00",  # a basic time with a fraction
    "2026-03-01T0900.123+00:00",
    "2026-03-01T09.12345+00:00",
]


def _event(at: str) -> bytes:
    return orjson.dumps(
        {
            "type": "handoff_requested",
            "request_id": "run-1/h1",
            "run_id": "run-1",
            "task_id": "plan",
            "from_agent": "orchestrator",
            "to_agent": "planner",
            "event_time": at,
        }
    )


@pytest.fixture(params=["pydantic only", "fast path on"])
def fast(request: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths: the compiled core's fast event (forced on) and pydantic's alone."""
    fast = dict(events._FAST_SPECS) if request.param == "fast path on" else {}
    monkeypatch.setattr(events, "_FAST", fast)


@pytest.mark.parametrize("at", NOT_BATONS_FORM)
def test_a_time_pydantic_refuses_is_refused_whatever_its_length(fast: None, at: str) -> None:
    assert datetime.fromisoformat(at).tzinfo is not None  # the hole: read, same length
    with pytest.raises(ValidationError):
        _PYDANTIC.validate_python(at)
    with pytest.raises(EventError, match="event_time"):
        parse_event(_event(at))


@pytest.mark.parametrize(
    ("at", "read"),
    [
        ("2026-03-01T09:00:45+00:00", datetime(2026, 3, 1, 9, 0, 45, tzinfo=UTC)),
        ("2026-03-01T09:00:45.000001+00:00", datetime(2026, 3, 1, 9, 0, 45, 1, tzinfo=UTC)),
        ("2026-03-01T09:00:45Z", datetime(2026, 3, 1, 9, 0, 45, tzinfo=UTC)),
        ("2026-03-01 09:00:45+00:00", datetime(2026, 3, 1, 9, 0, 45, tzinfo=UTC)),
    ],
)
def test_batons_form_and_pydantics_others_read_as_before(
    fast: None, at: str, read: datetime
) -> None:
    event = parse_event(_event(at))
    assert event.event_time == read and event.event_time.tzinfo is UTC
