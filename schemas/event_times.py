"""An event's time as Baton reads it: UTC, in the range the audit holds, read fast in the form
Baton itself writes it (the recorded inputs `baton replay` parses again, every event)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidatorFunctionWrapHandler

__all__ = ["MAX_EVENT_TIME", "MIN_EVENT_TIME", "event_time", "event_time_from"]

#: event times ClickHouse's DateTime64 holds, and that are not absurd for an orchestrator
MIN_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_EVENT_TIME = datetime(2200, 1, 1, tzinfo=UTC)
_NO_OFFSET = timedelta(0)
_from_iso = datetime.fromisoformat


def event_time(value: datetime) -> datetime:
    """``value`` (as pydantic read it) in UTC, or ValueError when out of range."""
    # a time without a zone is taken as UTC (some encoders drop the "Z"); the range keeps
    # the audit's DateTime64 column and partitioning sane. A UTC time gets datetime.UTC
    # itself, not pydantic's own zone object: comparing or subtracting times of two zone
    # objects asks each for its offset (~4x the cost), and the range check, the engine and
    # the audit chain do so per event; same instant, same text (isoformat, JSON)
    zone = value.tzinfo
    if zone is None:
        value = value.replace(tzinfo=UTC)
    elif zone is not UTC and zone.utcoffset(value) == _NO_OFFSET:
        value = value.astimezone(UTC)  # (a third of what replace(tzinfo=UTC) costs)
    if not MIN_EVENT_TIME <= value < MAX_EVENT_TIME:
        raise ValueError(
            f"out of range: event time {value.isoformat()} must be between "
            f"{MIN_EVENT_TIME.date()} and {MAX_EVENT_TIME.date()}"
        )
    return value


def event_time_from(value: Any, handler: ValidatorFunctionWrapHandler) -> datetime:
    """:func:`event_time` of the datetime pydantic reads ``value`` as (``handler``).

    The form Baton writes a UTC time in (orjson's: every recorded input `baton replay`
    parses) and most clients do, ``2026-03-01T09:00:45+00:00`` or with six digits of
    microseconds, and pydantic's (``...09:00:45.123456Z``: every event Baton's SDK sends),
    is read by ``datetime.fromisoformat`` (C, its zone datetime.UTC itself):
    the same datetime, without pydantic's zone object and its conversion (~0.8 µs of an
    event's parse). Any other text or value, or a time out of range (its error), as before:
    the fast path accepts nothing pydantic refuses (tests/unit/test_replay_speed_session10)."""
    if (
        type(value) is str
        and (
            (len(value) == 25 and value[19] == "+" and value[-6:] == "+00:00")
            or (len(value) == 32 and value[19] == "." and value[-6:] == "+00:00")
            # pydantic's form (Baton's SDK writes every event with it): "Z" for the zone
            or (len(value) == 20 and value[19] == "Z")
            or (len(value) == 27 and value[19] == "." and value[26] == "Z")
        )
        and value[10] == "T"
        # YYYY-MM-DDTHH:MM:SS only: fromisoformat also reads an ISO week date (2026-W09-1)
        # and colon-less times (T090000.1) of the same length, which pydantic refuses
        and value[4] == value[7] == "-"
        and value[13] == value[16] == ":"
    ):
        try:
            at = _from_iso(value)
        except ValueError:
            pass
        else:
            if MIN_EVENT_TIME <= at < MAX_EVENT_TIME:
                return at
    return event_time(handler(value))
