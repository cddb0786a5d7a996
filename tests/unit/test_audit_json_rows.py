"""The sink's shortcut from a record's JSON to its row: the general path's row, or none at all."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.schemas.decision import (
    DECISION_ADAPTER,
    DECISION_FIELDS,
    Decision,
    Fallback,
    Outcome,
    Phase,
)
from baton.sinks.audit_batch import AuditBatch
from baton.sinks.json_rows import shortcut_row, unknown_fields
from baton.sinks.rows import DecidedWindow, RowRejected, decision_row

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
WINDOW = DecidedWindow.around(NOW, ttl_days=30)


def _decision(**changes: object) -> Decision:
    base = Decision(
        decision_id="d1",
        request_id="r1",
        run_id="run_742",
        tenant="acme",
        phase=Phase.PRE_HANDOFF,
        outcome=Outcome.STOP,
        reason="ownership_conflict",
        from_agent="planner",
        to_agent="researcher",
        task_id="refund_check",
        spent_usd=0.1 + 0.2,
        reserved_usd=3,
        depth=2,
        event_time=NOW - timedelta(seconds=1),
        decided_at=NOW + timedelta(milliseconds=3),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _general(raw: bytes, window: DecidedWindow | None = WINDOW) -> list[Any] | None:
    """The general path's row, or None when it rejects the record."""
    try:
        return decision_row(DECISION_ADAPTER.validate_json(raw), "t", 3, 17, window)
    except (ValueError, RowRejected):  # pydantic's ValidationError is a ValueError
        return None


def test_every_decision_field_has_a_type_the_shortcut_knows() -> None:
    # a field of another type sends every record that sets it down the slow general path
    assert unknown_fields() == ()


def test_a_worker_record_takes_the_shortcut_and_gives_the_general_paths_row() -> None:
    raw = _decision(chain_prev="", chain_hash="ab" * 16, detail="x" * 60_000).to_json()
    row = shortcut_row(raw, "t", 3, 17, WINDOW)
    assert row is not None and repr(row) == repr(_general(raw))  # values, types and zones


@pytest.mark.parametrize(
    "changes",
    [
        {"event_time": None},
        {"decided_at": None},
        {"event_time": datetime(2026, 11, 25, 10, 0, tzinfo=timezone(timedelta(hours=1)))},
        {"decided_at": datetime(2026, 11, 25, 9, 0)},  # naive: taken as UTC
        {"approval_expires_at": NOW + timedelta(hours=1), "approval_id": "a1"},
        # (the enums, not their text: a compiled Decision's fields take their own types only)
        {"fallback": Fallback.SINGLE_AGENT, "shadow_outcome": Outcome.STOP},
        {"spent_usd": 999999999999.9999, "reserved_usd": -0.0000015},
        {"depth": 65535, "tool_calls": 2**32 - 1, "partition": -(2**31), "offset": 2**63 - 1},
    ],
)
def test_records_the_shortcut_takes_give_the_general_paths_row(changes: dict[str, Any]) -> None:
    raw = _decision(**changes).to_json()
    row = shortcut_row(raw, "t", 3, 17, WINDOW)
    assert row is not None and repr(row) == repr(_general(raw))


def _with(**fields: str) -> bytes:
    """A worker record with some fields replaced by raw JSON text."""
    base = orjson.loads(_decision().to_json())
    text = orjson.dumps({k: v for k, v in base.items() if k not in fields}).decode()
    extra = ",".join(f'"{k}":{v}' for k, v in fields.items())
    return (text[:-1] + ("," + extra if extra else "") + "}").encode()


@pytest.mark.parametrize(
    "raw",
    [
        _with(spent_usd='"1.5"'),  # pydantic coerces it: the general path's business
        _with(depth="3.0"),
        _with(depth="70000"),
        _with(decided_at='"1971-01-01T00:00:00Z"'),  # outside the window
        _with(decided_at='"2026-11-25 09:00:00Z"'),  # another ISO spelling
        _with(event_time='"9999-12-31T23:00:00-05:00"'),
        _with(spent_usd="1e308"),
        _with(phase='"nope"'),
        _with(tenant="null"),
        _with(reemitted="true"),  # a field the row leaves out, set
        b'{"decision_id": "x"}',
        b"[]",
        b"\xff",
    ],
)
def test_anything_unusual_takes_the_general_path(raw: bytes) -> None:
    assert shortcut_row(raw, "t", 3, 17, WINDOW) is None


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["stop", "allow", "pre_handoff", "constrained", "", "0.5", "1"]),
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes(
        min_value=datetime(2026, 10, 1), max_value=datetime(2026, 12, 31), timezones=st.none()
    ).map(lambda d: d.replace(tzinfo=UTC).isoformat()),
)


@settings(max_examples=1500, deadline=None)
@given(
    st.dictionaries(st.sampled_from([*DECISION_FIELDS, "extra"]), _VALUES, max_size=8),
    st.sets(st.sampled_from(DECISION_FIELDS), max_size=3),
)
def test_a_row_from_the_shortcut_is_always_the_general_paths_row(
    changes: dict[str, Any], dropped: set[str]
) -> None:
    record = {**orjson.loads(_decision().to_json()), **changes}
    for name in dropped:
        record.pop(name, None)
    raw = json.dumps(record).encode()
    row = shortcut_row(raw, "t", 3, 17, WINDOW)
    if row is not None:
        assert repr(row) == repr(_general(raw))


def test_a_batch_stores_the_same_rows_with_or_without_the_shortcut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = [
        _decision(decision_id=f"d{i}", spent_usd=i / 7, depth=i % 5).to_json() for i in range(50)
    ]
    records[7] = _with(spent_usd='"0.5"')  # general path
    records[9] = b"garbage"  # rejected
    fast = AuditBatch("t", ttl_days=30, clock=lambda: NOW)
    for i, raw in enumerate(records):
        fast.add(i % 3, i, raw)
    monkeypatch.setattr("baton.sinks.audit_batch.shortcut_row", lambda *a: None)
    slow = AuditBatch("t", ttl_days=30, clock=lambda: NOW)
    for i, raw in enumerate(records):
        slow.add(i % 3, i, raw)
    assert repr(fast.rows) == repr(slow.rows)
    assert fast.raws == slow.raws and fast.rejected == slow.rejected
    assert len(fast.rows) == 49 and fast.token() == slow.token()
