"""The audit sink sends times as ticks: the Native block clickhouse-connect would send anyway."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.insert import InsertContext
from clickhouse_connect.driver.transform import NativeTransform

from baton.sinks.audit_insert import times_as_ticks

pytestmark = pytest.mark.unit

TYPES = ("String", "DateTime64(6, 'UTC')", "Nullable(DateTime64(6, 'UTC'))", "UInt32")
TIMES = [
    datetime(1900, 1, 1, tzinfo=UTC),
    datetime(1900, 1, 1, 0, 0, 0, 500_000, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2026, 11, 29, 20, 15, 1, 123_456, tzinfo=UTC),
    datetime(2026, 11, 29, 21, 15, 1, 7, tzinfo=timezone(timedelta(hours=1))),
    datetime(2026, 11, 29, 20, 15, 1, 7),  # naive: UTC, as rows.decision_row reads it
    datetime(2200, 6, 30, 12, 0, 0, 654_321, tzinfo=UTC),
]


def _rows() -> list[list[Any]]:
    expires = [None, TIMES[4], None, TIMES[0], TIMES[7], None, TIMES[2], TIMES[5]]
    return [[f"d{i}", t, e, i] for i, (t, e) in enumerate(zip(TIMES, expires, strict=True))]


def _native(rows: list[list[Any]]) -> bytes:
    """The Native block clickhouse-connect sends for ``rows``."""
    columns = [get_from_name(kind) for kind in TYPES]
    context = InsertContext("t", ["id", "at", "expires", "n"], columns, data=rows)
    return b"".join(NativeTransform.build_insert(context))


def test_ticks_make_the_same_native_block_as_the_drivers_own_conversion() -> None:
    rows = _rows()
    times_as_ticks(rows, TYPES)
    assert all(type(r[1]) is int for r in rows)
    assert _native(rows) == _native(_rows())
    assert rows[4][1] == 1_795_983_301_123_456  # 2026-11-29T20:15:01.123456Z
    assert rows[0][1] == -2_208_988_800_000_000


def test_none_ints_and_other_columns_stay_as_they_are() -> None:
    rows = _rows()
    times_as_ticks(rows, TYPES)
    again = [list(r) for r in rows]
    times_as_ticks(again, TYPES)  # a retried insert: already ticks
    assert again == rows
    assert [r[2] is None for r in rows] == [e is None for _, _, e, _ in _rows()]
    assert [(r[0], r[3]) for r in rows] == [(r[0], r[3]) for r in _rows()]


def test_a_time_column_of_another_precision_is_left_to_the_driver() -> None:
    rows = _rows()
    times_as_ticks(rows, ("String", "DateTime64(3, 'UTC')", "DateTime('UTC')", "UInt32"))
    assert rows == _rows()
