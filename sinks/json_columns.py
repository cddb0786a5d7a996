"""A chunk of decision records in the worker's shape straight to its Native block, column by column.

Why: a parse process spent ~14 us a record making rows one at a time - ``json_rows``'s
shortcut checks a record's 37 fields in Python (~6 us), then clickhouse-connect pivots the
rows into columns and converts each time and amount again (~5 us). Here the records' values
are pivoted once (``zip``, in C) and each column is checked whole: the set of its value
types, its enum members, its integer bounds, and every distinct time and amount converted
once (cached). Times go to the block as ticks, amounts as Decimal(18, 6)'s scaled integers;
the rest is clickhouse-connect's own column writers.

Guarantee: the block, rows, token material, rejected records and copies are those
``sink_parse.parse_chunk``'s row path makes for the same records
(``tests/unit/test_sink_speed13_columns.py``). A record the shortcut would not take (a missing
key, a type, a value, a time outside the window, a re-emitted copy, not JSON at all) is left
to that very path (``json_rows.shortcut_row``, then ``AuditBatch.add``): kept, rejected or
counted as a copy exactly as before, and a row it makes is spliced in at its place. Not
guaranteed: that a chunk takes this path - column types it does not know (a schema other
than this code's) make ``encoded_chunk`` return None and the row path do the whole chunk.
"""

from __future__ import annotations

import sys
from array import array
from decimal import Decimal
from typing import Any

import orjson

from baton.sinks import json_rows as shape
from baton.sinks.audit_batch import AuditBatch, material_of
from baton.sinks.audit_insert import _driver_types, _is_microsecond_time, _ticks
from baton.sinks.rows import (
    DECISION_COLUMNS,
    MAX_RECORD_BYTES,
    DecidedWindow,
    RowRejected,
    is_command,
    usd,
)

__all__ = ["EncodedChunk", "encoded_chunk"]

#: (block, rows, spans, token material, rejected records, copies, the block's marks: where
#: each column's name and its data start, then the end; ``audit_insert.one_native_block``;
#: control decisions, ``AuditBatch.controls``)
EncodedChunk = tuple[
    bytes,
    int,
    dict[int, tuple[int, int]],
    bytes,
    list[list[Any]],
    list[Any],
    tuple[int, ...],
    list[Any],
]
#: (partition, offset, value) as the consumer read it
Record = tuple[int, int, bytes | None]

_STORED = shape._STORED
_FIELDS = len(shape._ALLOWED)
_DECIMAL = "Decimal(18, 6)"
_MICROS_PER_USD = 10**6

#: recent conversions (bounded, cleared when full): a run's spend repeats on its decisions,
#: one worker batch shares a decided_at
_MICROS: dict[float | int, int] = {}
_TICKS_OF: dict[str, int] = {}
_CACHE_MAX = 65_536


def encoded_chunk(
    topic: str, window: DecidedWindow | None, types: tuple[str, ...], records: list[Record]
) -> EncodedChunk | None:
    """The chunk as ``parse_chunk`` would return it, or None: the column types are not the
    ones this path encodes (the caller takes the row path)."""
    driver = _encoders(types)
    if driver is None:
        return None
    fast, values = _read(records)
    columns: list[Any] = list(zip(*values, strict=True)) if values else [()] * _FIELDS
    bad = _type_faults(columns)
    if bad:
        fast, values = _without(bad, fast, values)
        columns = list(zip(*values, strict=True)) if values else [()] * _FIELDS
    converted, bad = _value_faults(columns, window)
    if bad:  # (the conversions are cached: doing them again costs lookups only)
        fast, values = _without(bad, fast, values)
        columns = list(zip(*values, strict=True)) if values else [()] * _FIELDS
        converted, bad = _value_faults(columns, window)
        assert not bad, "a record's values passed once and failed on the second look"
    del columns[_STORED:]
    columns[:] = [converted.get(i, col) for i, col in enumerate(columns)]
    partitions = [records[k][0] for k in fast]
    offsets = [records[k][1] for k in fast]
    columns += [[topic] * len(fast), partitions, offsets]
    batch, at = _the_rest(topic, window, records, fast)
    if batch.rows:
        columns = _spliced(columns, fast, batch.rows, at)
    rows = len(columns[0])
    spans, material = material_of(columns[0], columns[-2], columns[-1])
    marks: list[int] = []
    block = _block(driver, columns, rows, marks)
    if block is None:
        return None
    return block, rows, spans, material, batch.rejected, batch.copies, tuple(marks), batch.controls


def _read(records: list[Record]) -> tuple[list[int], list[tuple[Any, ...]]]:
    """Each record's fields in ``DECISION_FIELDS`` order, and the records' positions; a record
    that is not JSON, not an object or lacks a field is left out (the row path's)."""
    loads, every_field = orjson.loads, shape._EVERY_FIELD
    # a record past MAX_RECORD_BYTES is the row path's (rejected unparsed): never read here
    if max(map(len, filter(None, _values(records))), default=0) <= MAX_RECORD_BYTES:
        try:  # one C call per step when every record is whole (almost always)
            return list(range(len(records))), list(map(every_field, map(loads, _values(records))))
        except (orjson.JSONDecodeError, TypeError, KeyError):
            pass
    fast: list[int] = []
    values: list[tuple[Any, ...]] = []
    for k, (_, _, value) in enumerate(records):
        if value is not None and len(value) > MAX_RECORD_BYTES:
            continue
        try:
            values.append(every_field(loads(value)))  # type: ignore[arg-type]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            continue
        fast.append(k)
    return fast, values


def _values(records: list[Record]) -> list[Any]:
    return [value for _, _, value in records]


def _without(
    bad: set[int], fast: list[int], values: list[tuple[Any, ...]]
) -> tuple[list[int], list[tuple[Any, ...]]]:
    kept = [j for j in range(len(fast)) if j not in bad]
    return [fast[j] for j in kept], [values[j] for j in kept]


def _type_faults(columns: list[Any]) -> set[int]:
    """Positions of the rows with a value of a type its field does not take as it is."""
    bad: set[int] = set()
    for col, allowed in zip(columns, shape._ALLOWED, strict=True):
        if not set(map(type, col)) <= allowed:
            bad.update(j for j, v in enumerate(col) if type(v) not in allowed)
    return bad


def _value_faults(
    columns: list[Any], window: DecidedWindow | None
) -> tuple[dict[int, list[Any]], set[int]]:
    """The columns whose values change on the way to the block (amounts as micro-dollars,
    times as ticks), and the positions of rows with a value the shortcut would not take
    (the decision on an operator's command among them: stored once, ``audit_controls``)."""
    bad: set[int] = set()
    phases = columns[shape._PHASE]
    if "control" in phases:
        requests = columns[shape._REQUEST]
        bad.update(j for j, p in enumerate(phases) if p == "control" and is_command(p, requests[j]))
    for i, members in shape._ENUM_VALUES:
        found = set(columns[i])
        found.discard(None)
        if not found <= members:
            bad.update(j for j, v in enumerate(columns[i]) if v is not None and v not in members)
    for i, low, high in shape._INT_BOUNDS:
        present = [v for v in columns[i] if v is not None] if None in columns[i] else columns[i]
        if present and not (low <= min(present) and max(present) <= high):
            bad.update(
                j for j, v in enumerate(columns[i]) if v is not None and not low <= v <= high
            )
    for i, default in shape._LEFT_OUT:  # unset: the default, of the default's type
        col = columns[i]
        if col.count(default) != len(col) or not set(map(type, col)) <= {type(default)}:
            bad.update(j for j, v in enumerate(col) if v != default or type(v) is not type(default))
    converted: dict[int, list[Any]] = {}
    for i in shape._FLOAT_AT:
        converted[i] = _micros(columns[i], bad)
    for i in shape._TIME_AT:
        converted[i] = _ticks_of(columns[i], bad)
    _times_filled(converted, bad, window)
    return converted, bad


def _micros(column: tuple[Any, ...], bad: set[int]) -> list[Any]:
    """Each amount as Decimal(18, 6)'s integer (``usd`` times 10**6); a value ``usd`` refuses
    marks its row bad. (-0.0 and 0.0 are one key here, and one integer: 0.)"""
    got = list(map(_MICROS.get, column))
    if None in got:
        for j, v in enumerate(column):
            if got[j] is None:
                try:
                    micros = int(usd(v).scaleb(6))
                except RowRejected:
                    bad.add(j)
                    continue
                if len(_MICROS) >= _CACHE_MAX:
                    _MICROS.clear()
                _MICROS[v] = got[j] = micros
    return got


def _ticks_of(column: tuple[Any, ...], bad: set[int]) -> list[Any]:
    """Each time text as its ticks (``json_rows._utc_time`` then ``audit_insert._ticks``),
    None staying None; a text the shortcut would not read marks its row bad."""
    got = list(map(_TICKS_OF.get, column, column))  # a miss gives the text (or None) back
    if str not in set(map(type, got)):
        return got
    for j, v in enumerate(got):
        if type(v) is str:
            t = shape._utc_time(v)
            if t is None:
                bad.add(j)
                got[j] = None  # (its row goes: no text left among the ticks)
                continue
            if len(_TICKS_OF) >= _CACHE_MAX:
                _TICKS_OF.clear()
            _TICKS_OF[v] = got[j] = _ticks(t)
    return got


def _times_filled(
    converted: dict[int, list[Any]], bad: set[int], window: DecidedWindow | None
) -> None:
    """decided_at and event_time each fill the other when one is unset (both unset: bad), as
    ``json_rows._finished`` does; a decided_at outside the window marks its row bad."""
    decided, event = converted[shape._DECIDED_AT], converted[shape._EVENT_TIME]
    if None in decided or None in event:
        for j, (d, e) in enumerate(zip(decided, event, strict=True)):
            if d is None or e is None:
                if d is None and e is None:
                    bad.add(j)
                decided[j] = event[j] = d if d is not None else e
    if window is None or not decided:
        return
    low, high = _ticks(window.earliest), _ticks(window.latest)
    present = [d for d in decided if d is not None]
    if present and not (low <= min(present) and max(present) <= high):
        bad.update(j for j, d in enumerate(decided) if d is not None and not low <= d <= high)


def _the_rest(
    topic: str, window: DecidedWindow | None, records: list[Record], fast: list[int]
) -> tuple[AuditBatch, list[int]]:
    """The records not read here through ``parse_chunk``'s row path, in their order, and
    where each row it made goes (its record's position)."""
    batch = AuditBatch(topic)
    batch.window = window
    placed: list[int] = []
    if len(fast) == len(records):
        return batch, placed
    taken = set(fast)
    for k, (partition, offset, value) in enumerate(records):
        if k in taken:
            continue
        row = None if value is None else shape.shortcut_row(value, topic, partition, offset, window)
        if row is None:
            batch.add(partition, offset, value)
        else:
            batch.rows.append(row)
        if len(batch.rows) > len(placed):
            placed.append(k)
    return batch, placed


def _spliced(
    columns: list[Any], fast: list[int], rows: list[list[Any]], at: list[int]
) -> list[Any]:
    """The columns with the row path's ``rows`` put in at their records' places ``at``,
    converted as the block holds them (times as ticks, amounts as micro-dollars)."""
    placed = list(zip(fast, zip(*columns, strict=True), strict=True)) if fast else []
    for k, row in zip(at, rows, strict=True):
        for i in shape._FLOAT_AT:
            row[i] = int(Decimal(row[i]).scaleb(6))
        for i in shape._TIME_AT:
            if row[i] is not None:
                row[i] = _ticks(row[i])
        placed.append((k, tuple(row)))
    placed.sort(key=lambda item: item[0])
    return [list(col) for col in zip(*(row for _, row in placed), strict=True)]


_ENCODERS: dict[tuple[str, ...], list[Any] | None] = {}


def _encoders(types: tuple[str, ...]) -> list[Any] | None:
    """clickhouse-connect's type of each column, _DECIMAL for an amount written here; None
    when a time or amount column is not of the type this path writes."""
    if types not in _ENCODERS:
        ok = (
            not shape._OTHERS
            and len(types) == len(DECISION_COLUMNS)
            and all(types[i] == _DECIMAL for i in shape._FLOAT_AT)
            and all(_is_microsecond_time(types[i]) for i in shape._TIME_AT)
        )
        if ok:
            driver: list[Any] = _driver_types(types)
            for i in shape._FLOAT_AT:
                driver[i] = _DECIMAL
            _ENCODERS[types] = driver
        else:
            _ENCODERS[types] = None
    return _ENCODERS[types]


def _block(driver: list[Any], columns: list[Any], rows: int, marks: list[int]) -> bytes | None:
    """One Native block of ``columns`` (``audit_insert.native_block``'s bytes for one block),
    noting in ``marks`` where each column's name and data start and where the block ends;
    None when the driver cannot encode a value (the row path then finds it)."""
    from clickhouse_connect.driver.common import write_leb128
    from clickhouse_connect.driver.insert import InsertContext

    if not rows:
        return b""
    context = InsertContext("t", list(DECISION_COLUMNS), driver)
    out = bytearray()
    write_leb128(len(columns), out)
    write_leb128(rows, out)
    try:
        for name, kind, column in zip(DECISION_COLUMNS, driver, columns, strict=True):
            marks.append(len(out))
            _name(name, out)
            if kind == _DECIMAL:
                _name(_DECIMAL, out)
                marks.append(len(out))
                scaled = array("q", column)
                if sys.byteorder != "little":
                    scaled.byteswap()
                out += scaled.tobytes()
                continue
            _name(kind.insert_name, out)
            marks.append(len(out))
            context.start_column(name)
            if not _plain_strings(kind, column, rows, out):
                kind.write_column(column, out, context)
    except Exception:  # the row path's insert names the value
        return None
    if context.insert_exception is not None:
        return None
    marks.append(len(out))
    return bytes(out)


def _plain_strings(kind: Any, column: list[Any], rows: int, out: bytearray) -> bool:
    """A String or Nullable(String) column written here when every value is a str or every
    one None (the driver builds a null map in a Python loop); False: not such a column."""
    from clickhouse_connect.datatypes.string import String
    from clickhouse_connect.driver.ctypes import data_conv

    if type(kind) is not String or kind.low_card:
        return False
    nulls = column.count(None)
    if nulls == rows and kind.nullable:
        out += b"\x01" * rows  # all null: each an empty string behind its null flag
        out += bytes(rows)
        return True
    if nulls or not column or type(column[0]) is not str:
        return False
    if kind.nullable:
        out += bytes(rows)
    if data_conv.write_str_col(column, False, kind.encoding, out):
        raise ValueError("a string column the driver would not write")  # (no None: never)
    return True


def _name(text: str, out: bytearray) -> None:
    from clickhouse_connect.driver.common import write_leb128

    encoded = text.encode()
    write_leb128(len(encoded), out)
    out += encoded
