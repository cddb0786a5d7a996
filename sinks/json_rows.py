"""A decision record's JSON straight to its audit row, for records in the shape the worker writes.

The sink's general path (pydantic's ``DECISION_ADAPTER`` then ``rows.decision_row``) costs
~15 us a record, as much as ClickHouse takes to store the row with every view. Almost every
record is one the worker wrote: every field present, each of its JSON type, times as
``datetime.isoformat`` text. :func:`shortcut_row` reads such a record with orjson and checks
it field by field, and gives up (returns None) on *anything* else - a missing or null field,
a lax type pydantic would coerce (``"1.5"`` for a number), a time in another ISO spelling, a
value out of its column's range, a ``decided_at`` outside the window. The caller then takes
the general path, which keeps or rejects the record with its usual error: the shortcut
never rejects, so every error message and ``error_kind`` stays the general path's.

Guarantee: a row it returns equals ``decision_row(DECISION_ADAPTER.validate_json(raw), ...)``
(``tests/unit/test_audit_json_rows.py`` checks that on arbitrary records). Not guaranteed: that
a record takes the shortcut; a field of a type it does not know (see ``_kind``) sends every
record that sets it down the general path, correct but slow.
"""

from __future__ import annotations

import re
import types
from dataclasses import MISSING
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from operator import itemgetter
from typing import Any, Union, get_args, get_origin

import orjson

from baton.schemas.decision import DECISION_FIELDS
from baton.schemas.decision_doc import decision_defaults, decision_hints
from baton.sinks.rows import (
    _INT_RANGES,
    DATETIME64_MAX,
    DATETIME64_MIN,
    DECISION_COLUMNS,
    MAX_RECORD_BYTES,
    DecidedWindow,
    RowRejected,
    is_command,
    usd,
)

__all__ = ["shortcut_row", "unknown_fields"]

#: what ``datetime.isoformat`` writes (and pydantic reads the same way): seconds, optional
#: microseconds, optional zone; no other ISO spelling takes the shortcut
_ISO_TIME = re.compile(
    r"\d{4}-\d\d-\d\dT(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{6})?"
    r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)?"
)
_NO_DEFAULT = object()


def _kind(hint: Any) -> tuple[str, bool, Any]:
    """(kind, optional, enum values) of a Decision field's type; kind "other" when unknown."""
    args = get_args(hint)
    optional = (get_origin(hint) in (Union, types.UnionType)) and type(None) in args
    inner = [a for a in args if a is not type(None)] if optional else [hint]
    if len(inner) != 1:
        return "other", optional, None
    (base,) = inner
    if isinstance(base, type) and issubclass(base, Enum):
        return "enum", optional, frozenset(member.value for member in base)
    names = {str: "str", bool: "bool", int: "int", float: "float", datetime: "time"}
    return names.get(base, "other"), optional, None


def _plan() -> dict[str, list[tuple[int, str, bool, Any, Any]]]:
    """Field positions grouped by kind: (index, name, optional, default, enum values)."""
    hints = decision_hints()  # (Decision's, from its twin: a compiled one has none)
    defaults = {
        name: (default if default is not MISSING else _NO_DEFAULT)
        for name, default in decision_defaults().items()
    }
    plan: dict[str, list[tuple[int, str, bool, Any, Any]]] = {}
    for i, name in enumerate(DECISION_FIELDS):
        kind, optional, values = _kind(hints[name])
        plan.setdefault(kind, []).append((i, name, optional, defaults[name], values))
    return plan


_PLAN = _plan()
_STRS = tuple(_PLAN.get("str", ()))
_ENUMS = tuple(_PLAN.get("enum", ()))
_INTS = tuple(
    (i, name, optional, default, _INT_RANGES.get(name))
    for i, name, optional, default, _ in _PLAN.get("int", ())
)
_BOOLS = tuple(_PLAN.get("bool", ()))
_FLOATS = tuple(_PLAN.get("float", ()))
_TIMES = tuple(_PLAN.get("time", ()))
_OTHERS = tuple(_PLAN.get("other", ()))
#: the same, cut to what _values reads for a record of a known shape
_ENUM_VALUES = tuple((i, values) for i, _, _, _, values in _ENUMS)
_INT_BOUNDS = tuple((i, b[0], b[1]) for i, _, _, _, b in _INTS if b is not None)
_FLOAT_AT = tuple(i for i, *_ in _FLOATS)
_TIME_AT = tuple(i for i, *_ in _TIMES)
_EVENT_TIME = DECISION_FIELDS.index("event_time")
_DECIDED_AT = DECISION_FIELDS.index("decided_at")
_PHASE = DECISION_FIELDS.index("phase")
_REQUEST = DECISION_FIELDS.index("request_id")
_FIELD_NAMES = DECISION_FIELDS
_EVERY_FIELD = itemgetter(*_FIELD_NAMES)
#: the row holds the stored fields (rows.DECISION_COLUMNS), a prefix of the record's fields;
#: a field it leaves out must be unset (at its default) for a record to take the shortcut
_STORED = len(DECISION_COLUMNS) - 3
assert DECISION_COLUMNS[:_STORED] == DECISION_FIELDS[:_STORED], "stored fields: not a prefix"
_LEFT_OUT = tuple(
    (i, default) for kind in _PLAN.values() for i, _, _, default, _ in kind if i >= _STORED
)

#: recent conversions: a run's spend repeats on its decisions, and one worker batch shares one
#: decided_at; bounded, cleared when full
_USD: dict[float, Decimal] = {}
_TIMES_SEEN: dict[str, datetime] = {}
_CACHE_MAX = 65_536


def _allowed_types() -> tuple[frozenset[type], ...]:
    """Per field, the types of value that pass its type check without a default filled in."""
    base = {
        "str": {str},
        "enum": {str},
        "int": {int},
        "bool": {bool},
        "float": {float, int},
        "time": {str},
        "other": set(),
    }
    allowed: list[frozenset[type]] = [frozenset()] * len(DECISION_FIELDS)
    for kind, entries in _PLAN.items():
        for i, _, optional, _, _ in entries:
            types_ = base[kind] | ({type(None)} if optional or kind == "other" else set())
            allowed[i] = frozenset(types_)
    return tuple(allowed)


_ALLOWED = _allowed_types()
#: the type of each field's value in records seen to pass every type check: a record with
#: one of these needs only its values checked (bounded: a flood of odd shapes stops adding)
_GOOD_SHAPES: set[tuple[type, ...]] = set()
_SHAPES_MAX = 4096


def unknown_fields() -> tuple[str, ...]:
    """Decision fields whose type the shortcut does not know (set: the general path)."""
    return tuple(name for _, name, _, _, _ in _OTHERS)


def shortcut_row(
    raw: bytes,
    topic: str,
    partition: int,
    offset: int,
    window: DecidedWindow | None = None,
) -> list[Any] | None:
    """The row of ``raw`` (as ``decision_row`` makes it), or None: take the general path."""
    if len(raw) > MAX_RECORD_BYTES:  # the general path rejects it unparsed
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(record) is not dict:
        return None
    try:  # the worker writes every field: one C call (0.8 us a row less than map(get))
        row = list(_EVERY_FIELD(record))
    except KeyError:
        row = list(map(record.get, _FIELD_NAMES))
    if is_command(row[_PHASE], row[_REQUEST]):  # stored once (audit_controls)
        return None
    shape = tuple(map(type, row))
    if shape in _GOOD_SHAPES:
        if not _values(row):
            return None
    elif not _checked(row, record, shape):
        return None
    return _finished(row, topic, partition, offset, window)


def _checked(row: list[Any], record: dict[str, Any], shape: tuple[type, ...]) -> bool:
    """Every field checked (and defaults filled in); a passing shape is remembered."""
    if not (
        _strings(row, record)
        and _enums(row, record)
        and _integers(row, record)
        and _booleans(row, record)
        and _amounts(row, record)
        and _times(row, record)
        and _others(row, record)
    ):
        return False
    if len(_GOOD_SHAPES) < _SHAPES_MAX and all(map(frozenset.__contains__, _ALLOWED, shape)):
        _GOOD_SHAPES.add(shape)
    return True


def _values(row: list[Any]) -> bool:
    """The value checks and conversions of a record whose shape passed the type checks:
    enum members, integer ranges, amounts, times (a None here is an unset optional)."""
    for i, values in _ENUM_VALUES:
        v = row[i]
        if v is not None and v not in values:
            return False
    for i, low, high in _INT_BOUNDS:
        v = row[i]
        if v is not None and not low <= v <= high:
            return False
    for i in _FLOAT_AT:
        amount = _amount(row[i])
        if amount is None:
            return False
        row[i] = amount
    for i in _TIME_AT:
        v = row[i]
        if v is not None:
            t = _time(v)
            if t is None:
                return False
            row[i] = t
    return True


def _finished(
    row: list[Any], topic: str, partition: int, offset: int, window: DecidedWindow | None
) -> list[Any] | None:
    """The checked values as the row: left-out fields unset, times filled in, window, source."""
    for i, default in _LEFT_OUT:
        if row[i] != default or type(row[i]) is not type(default):
            return None
    del row[_STORED:]
    decided_at, event_time = row[_DECIDED_AT], row[_EVENT_TIME]
    if decided_at is None or event_time is None:
        if decided_at is None and event_time is None:
            return None  # the general path names the problem
        row[_DECIDED_AT] = row[_EVENT_TIME] = decided_at or event_time
    if window is not None and not window.earliest <= row[_DECIDED_AT] <= window.latest:
        return None
    row.extend((topic, partition, offset))
    return row


def _absent(row: list[Any], record: dict[str, Any], i: int, name: str, default: Any) -> bool:
    """A None at ``i`` that stands for a missing key with a default: fill the default in."""
    if default is _NO_DEFAULT or name in record:
        return False
    row[i] = default
    return True


def _strings(row: list[Any], record: dict[str, Any]) -> bool:
    for i, name, optional, default, _ in _STRS:
        v = row[i]
        if type(v) is not str and not (
            v is None and (optional or _absent(row, record, i, name, default))
        ):
            return False
    return True


def _enums(row: list[Any], record: dict[str, Any]) -> bool:
    for i, name, optional, default, values in _ENUMS:
        v = row[i]
        if v is None:
            if optional or _absent(row, record, i, name, default):
                if row[i] is not None:
                    row[i] = row[i].value
                continue
            return False
        if type(v) is not str or v not in values:
            return False
    return True


def _integers(row: list[Any], record: dict[str, Any]) -> bool:
    for i, name, optional, default, bounds in _INTS:
        v = row[i]
        if type(v) is not int:
            if v is None and (optional or _absent(row, record, i, name, default)):
                continue
            return False
        if bounds is not None and not bounds[0] <= v <= bounds[1]:
            return False
    return True


def _booleans(row: list[Any], record: dict[str, Any]) -> bool:
    for i, name, optional, default, _ in _BOOLS:
        v = row[i]
        if type(v) is not bool and not (
            v is None and (optional or _absent(row, record, i, name, default))
        ):
            return False
    return True


def _amounts(row: list[Any], record: dict[str, Any]) -> bool:
    for i, name, optional, default, _ in _FLOATS:
        v = row[i]
        if type(v) is not float and type(v) is not int:
            if v is None and (optional or _absent(row, record, i, name, default)):
                if row[i] is None:
                    continue
            else:
                return False
        amount = _amount(row[i])
        if amount is None:
            return False
        row[i] = amount
    return True


def _amount(v: float | int) -> Decimal | None:
    """``usd(v)`` (cached), or None when the column cannot hold it."""
    # 0.0 == -0.0 as keys, but their Decimals differ in sign: zeros bypass the cache
    amount = _USD.get(v) if v else None
    if amount is None:
        try:
            amount = usd(v)
        except RowRejected:
            return None
        if len(_USD) >= _CACHE_MAX:
            _USD.clear()
        _USD[v] = amount
    return amount


def _times(row: list[Any], record: dict[str, Any]) -> bool:
    for i, name, optional, default, _ in _TIMES:
        v = row[i]
        if v is None:
            if optional or _absent(row, record, i, name, default):
                continue
            return False
        if type(v) is not str:
            return False
        t = _time(v)
        if t is None:
            return False
        row[i] = t
    return True


def _time(text: str) -> datetime | None:
    """``_utc_time(text)`` (cached)."""
    t = _TIMES_SEEN.get(text)
    if t is None:
        t = _utc_time(text)
        if t is None:
            return None
        if len(_TIMES_SEEN) >= _CACHE_MAX:
            _TIMES_SEEN.clear()
        _TIMES_SEEN[text] = t
    return t


def _utc_time(text: str) -> datetime | None:
    """``text`` as an aware UTC time within DateTime64's range, or None."""
    if _ISO_TIME.fullmatch(text) is None:
        return None
    try:
        t = datetime.fromisoformat(text)
        t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return t if DATETIME64_MIN <= t <= DATETIME64_MAX else None


def _others(row: list[Any], record: dict[str, Any]) -> bool:
    """A field of an unknown type takes the shortcut only when it is unset."""
    for i, name, optional, default, _ in _OTHERS:
        if row[i] is not None or not (optional or _absent(row, record, i, name, default)):
            return False
    return True
