"""One insert into an audit table, failures sorted: data ClickHouse refused, or a failed server.

Refused data (a value out of range, a block spanning too many partitions) is ``RowsRefused``:
the caller splits the rows to find the one at fault (``audit_batch.write_batch``). Anything
else - unreachable, timeouts, a missing table, "too many parts" back-pressure - is
``AuditUnavailable``: the same insert is tried again later. Not guaranteed: a server error code
not listed in ``ROW_DATA_CODES`` is taken as the server's, so a row that triggers one is
retried, never rejected.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    ClickHouseError,
    DatabaseError,
    DataError,
    OperationalError,
)

from baton.schemas.errors import AuditUnavailable
from baton.sinks.clickhouse import _first_line

__all__ = [
    "INSERT_SETTINGS",
    "ROW_DATA_CODES",
    "RowsRefused",
    "insert_native",
    "insert_rows",
    "insert_types",
    "load_insert_imports",
    "native_block",
    "one_native_block",
    "times_as_ticks",
]


class RowsRefused(Exception):
    """ClickHouse (the server, or the driver encoding the block) refused an insert's *data*,
    not the connection: splitting the rows helps. ``row_level``: some row cannot be stored
    (a value out of range, a violated constraint) - a row refused alone is that row's fault;
    otherwise the block as a whole was refused (too many partitions) and smaller ones pass.

    Internal to the sink (``write_batch`` turns it into rejected rows or AuditUnavailable),
    so it is not part of the BatonError tree.
    """

    def __init__(self, message: str, *, row_level: bool) -> None:
        super().__init__(message)
        self.row_level = row_level


#: server error codes that blame a value in the block: the block is split to find its row
ROW_DATA_CODES: dict[int, str] = {
    6: "CANNOT_PARSE_TEXT",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    38: "CANNOT_PARSE_DATE",
    41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH",
    69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE",
    72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA",
    131: "TOO_LARGE_STRING_SIZE",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    395: "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",
    407: "DECIMAL_OVERFLOW",
    469: "VIOLATED_CONSTRAINT",
    691: "UNKNOWN_ELEMENT_OF_ENUM",
}
_TOO_MANY_PARTS = 252  # also "too many partitions for a single INSERT block": that one splits

#: settings of every audit insert besides its token. ``optimize_on_insert`` off: a
#: ReplacingMergeTree (decisions, decision_variants, rejected) otherwise runs each inserted
#: block through its replacing merge to fold the block's own copies of one key, which copies
#: every column row by row (the recorded input's kilobyte included): 1.2-1.8 us of chDB CPU a
#: row, a fifth of the insert, more than the decision_variants view costs (0.2-0.6 us). The
#: copies it would fold are folded by FINAL and by merges as copies in two blocks always were
#: (every reader of decisions reads FINAL; the sort keeps a block's order, so FINAL keeps the
#: same last row either way). The aggregating views group in their own SELECT: unchanged.
INSERT_SETTINGS: dict[str, object] = {"optimize_on_insert": 0}


def load_insert_imports() -> None:
    """Import now what clickhouse-connect imports at its first insert (pandas, when installed).

    Why: its first ``insert`` checks whether the rows are a DataFrame, which imports pandas
    (0.27-0.45 s, the GIL held) on the writer thread while the first batch waits and the
    parser stalls; measured as the first write of a run taking 0.6 s for 10,000 rows against
    0.25-0.3 s for 20,000 later. Done at start-up, before any record is read.
    """
    with contextlib.suppress(ImportError):  # without pandas, clickhouse-connect needs none
        import pandas  # noqa: F401


def insert_types(client: Client, table: str, columns: tuple[str, ...]) -> tuple[str, ...]:
    """The types to send ``columns`` of ``table`` (``db.name``) as: the table's own, with
    ``LowCardinality(T)`` sent as ``T`` when the server converts a Native block's types.

    Why: clickhouse-connect builds a LowCardinality column's dictionary in Python, a quarter
    of its time encoding an audit block; ClickHouse does the same in C++ when it converts the
    block on insert (``input_format_native_allow_types_conversion``, on by default, probed
    here so an older server gets the exact types). Passing the types also spares the
    ``DESCRIBE`` clickhouse-connect runs before every insert without them. Raises
    ClickHouseError (callers translate it), and AuditUnavailable when the table lacks a
    column (a schema older than this code: retried, never taken as the rows' fault).
    """
    database, name = table.split(".", 1)
    rows = client.query(
        "SELECT name, type, (SELECT any(value) FROM system.settings "
        "WHERE name = 'input_format_native_allow_types_conversion') FROM system.columns "
        "WHERE database = {db:String} AND table = {t:String}",
        parameters={"db": database, "t": name},
    ).result_rows
    types = {str(column): str(kind) for column, kind, _ in rows}
    converts = bool(rows) and str(rows[0][2]) in ("1", "true")
    missing = [c for c in columns if c not in types]
    if missing:
        raise AuditUnavailable(
            f"the audit table {table} has no column {', '.join(missing)}: its schema is older "
            "than this sink's; restart the sink to migrate it"
        )
    return tuple(_plain(types[c]) if converts else types[c] for c in columns)


def _plain(kind: str) -> str:
    return kind[len("LowCardinality(") : -1] if kind.startswith("LowCardinality(") else kind


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: recent times and their ticks: one worker batch shares a decided_at, a run's events repeat
#: their times; bounded, cleared when full
_TICKS: dict[datetime, int] = {}
_TICKS_MAX = 65_536


def times_as_ticks(rows: Sequence[list[object]], types: Sequence[str]) -> None:
    """Each time in a ``DateTime64(6, ...)`` column of ``rows`` replaced by its ticks
    (microseconds since 1970 UTC), in place; a None (Nullable) or an int stays.

    Why: clickhouse-connect writes an int column as it is, but converts each datetime through
    ``timestamp()`` (1.35 us a value at load 15, two or three a row: half its Native encoding
    of an audit row, on the writer thread with the GIL held); here a time is one exact integer
    division, and a repeated one (a worker batch's decided_at) a dict lookup.
    """
    at = [i for i, kind in enumerate(types) if _is_microsecond_time(kind)]
    if not at:
        return
    for row in rows:
        for i in at:
            value = row[i]
            if type(value) is datetime:
                row[i] = _ticks(value)


def _is_microsecond_time(kind: str) -> bool:
    kind = kind[len("Nullable(") : -1] if kind.startswith("Nullable(") else kind
    return kind.startswith("DateTime64(6")


def _ticks(value: datetime) -> int:
    ticks = _TICKS.get(value)
    if ticks is None:
        # a naive time is UTC, as everywhere in the audit (rows.decision_row)
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        ticks = (aware - _EPOCH) // _MICROSECOND
        if len(_TICKS) >= _TICKS_MAX:
            _TICKS.clear()
        _TICKS[value] = ticks
    return ticks


def insert_rows(
    client: Client,
    table: str,
    rows: list[list[object]],
    columns: tuple[str, ...],
    token: str,
    label: str,
    types: tuple[str, ...] | None = None,
) -> None:
    """Insert ``rows`` with ``insert_deduplication_token=token``, failures sorted at the boundary.

    ``types``: the column types to encode with (``insert_types``); None: asked for each insert.
    With ``types``, the times of ``rows`` become ticks in place (``times_as_ticks``).

    Raises RowsRefused when the data was refused (a value, or a block spanning too many
    partitions), AuditUnavailable for everything else - unreachable, timeouts, a missing
    table, "too many parts" back-pressure - which retrying the same insert later can cure.
    An unknown server error is taken as the server's, never as the rows': it is retried, not
    turned into rejected rows.
    """
    doing = f"inserting {len(rows)} rows into {table} ({token[:200]})"
    typed = {} if types is None else {"column_type_names": list(types)}
    if types is not None:
        times_as_ticks(rows, types)
    with _failures_sorted(label, doing):
        client.insert(
            table,
            rows,
            column_names=list(columns),
            settings={"insert_deduplication_token": token, **INSERT_SETTINGS},
            **typed,
        )


def native_block(
    rows: list[list[object]], columns: tuple[str, ...], types: tuple[str, ...]
) -> bytes | None:
    """The Native block ``client.insert(rows, column_type_names=types)`` sends (times as ticks
    first), built here so another process can build it; None when the driver cannot encode a
    value (the row path's insert then finds the row: ``insert_rows``)."""
    from clickhouse_connect.driver.insert import InsertContext
    from clickhouse_connect.driver.transform import NativeTransform

    if not rows:
        return b""
    times_as_ticks(rows, types)
    context = InsertContext("t", list(columns), _driver_types(types), rows)
    try:
        chunks = list(NativeTransform.build_insert(context))
    except Exception:  # the driver names the problem when the row path inserts the rows
        return None
    if context.insert_exception is not None:
        return None
    first = chunks[0]
    chunks[0] = first[first.index(b"\n") + 1 :]  # the statement the HTTP body starts with
    return b"".join(chunks)


#: column types whose Native data is the rows' values one after the other (a null map first
#: when Nullable): two blocks' data of such a column, concatenated, is one block's
_PLAIN_DATA = (
    r"(?:String|U?Int(?:8|16|32|64)|Float(?:32|64)|Bool|Date|DateTime"
    r"|Decimal\(\d+, \d+\)|DateTime64\(\d(?:, '[\w/+-]+')?\))"
)
_CONCATENABLE = re.compile(rf"{_PLAIN_DATA}|Nullable\({_PLAIN_DATA}\)")


def one_native_block(blocks: list[tuple[bytes, int, tuple[int, ...] | None]]) -> bytes:
    """The Native blocks of one insert, (block, rows, marks) each, as one block: each column's
    data from every block in turn (ClickHouse then runs the insert's views once, on one block:
    20 blocks of 1,000 rows took 1.4 us a row more of chDB's CPU than one of 20,000, measured).
    Marks (``json_columns``): where each column's name and data start, then the block's end.
    Blocks without marks, of other columns or of a type whose data does not concatenate
    (LowCardinality's dictionary): the blocks one after the other, as the driver sends them."""
    parts = [(block, rows, marks) for block, rows, marks in blocks if rows]
    if len(parts) < 2 or any(not marks for _, _, marks in parts):
        return _in_turn(blocks)
    first, _, head = parts[0]
    columns = (len(head) - 1) // 2
    headers = [first[head[2 * i] : head[2 * i + 1]] for i in range(columns)]
    nullable = []
    for header in headers:
        kind = _type_of(header)
        if kind is None or not _CONCATENABLE.fullmatch(kind):
            return _in_turn(blocks)
        nullable.append(kind.startswith("Nullable("))
    for block, _, marks in parts[1:]:
        if len(marks) != len(head) or any(
            block[marks[2 * i] : marks[2 * i + 1]] != headers[i] for i in range(columns)
        ):
            return _in_turn(blocks)
    out = bytearray()
    _leb128(columns, out)
    _leb128(sum(rows for _, rows, _ in parts), out)
    views = [(memoryview(block), rows, marks) for block, rows, marks in parts]
    for i in range(columns):
        out += headers[i]
        spans = [(view, rows, marks[2 * i + 1], marks[2 * i + 2]) for view, rows, marks in views]
        if nullable[i]:  # every block's null map, then every block's values
            for view, rows, start, _ in spans:
                out += view[start : start + rows]
            for view, rows, start, end in spans:
                out += view[start + rows : end]
        else:
            for view, _, start, end in spans:
                out += view[start:end]
    return bytes(out)


def _in_turn(blocks: list[tuple[bytes, int, tuple[int, ...] | None]]) -> bytes:
    """The blocks one after the other (built only where that is the answer: a batch is ~20 MB,
    and joining it where the columns are then joined instead copied it for nothing)."""
    return b"".join(block for block, _, _ in blocks)


def _type_of(header: bytes) -> str | None:
    """The type name in a column's header (its name, then its type, each length-prefixed)."""
    try:
        size, at = _read_leb128(header, 0)
        size, at = _read_leb128(header, at + size)
        return header[at : at + size].decode() if at + size == len(header) else None
    except (IndexError, UnicodeDecodeError):
        return None


def _leb128(value: int, out: bytearray) -> None:
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return
        out.append(0x80 | low)


def _read_leb128(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _driver_types(types: tuple[str, ...]) -> list[Any]:
    from clickhouse_connect.datatypes.registry import get_from_name

    return [get_from_name(kind) for kind in types]


def insert_native(
    client: Client,
    table: str,
    columns: tuple[str, ...],
    block: bytes,
    rows: int,
    token: str,
    label: str,
) -> None:
    """Insert a Native ``block`` of ``rows`` rows (``native_block``) with
    ``insert_deduplication_token=token``; failures sorted as ``insert_rows`` sorts them."""
    doing = f"inserting {rows} rows into {table} ({token[:200]})"
    with _failures_sorted(label, doing):
        client.raw_insert(
            table,
            list(columns),
            insert_block=block,
            settings={"insert_deduplication_token": token, **INSERT_SETTINGS},
            fmt="Native",
        )


@contextlib.contextmanager
def _failures_sorted(label: str, doing: str) -> Iterator[None]:
    """Refused data as RowsRefused, everything else as AuditUnavailable (see ``insert_rows``)."""
    try:
        yield
    except OperationalError as exc:  # before DatabaseError: it is one
        raise AuditUnavailable(
            f"ClickHouse at {label} is unreachable while {doing}: {_first_line(exc)}"
        ) from exc
    except DataError as exc:  # the driver could not encode a value of the block
        raise RowsRefused(f"{_first_line(exc)}", row_level=True) from exc
    except DatabaseError as exc:
        code = exc.code if exc.code is not None else _code_of(exc)
        if code in ROW_DATA_CODES:
            raise RowsRefused(_first_line(exc), row_level=True) from exc
        if code == _TOO_MANY_PARTS and "INSERT block" in str(exc):
            raise RowsRefused(_first_line(exc), row_level=False) from exc
        raise AuditUnavailable(
            f"ClickHouse at {label} failed while {doing}: {_first_line(exc)}"
        ) from exc
    except ClickHouseError as exc:
        raise AuditUnavailable(
            f"ClickHouse at {label} failed while {doing}: {_first_line(exc)}"
        ) from exc
    except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:
        if not _raised_while_encoding(exc):
            raise AuditUnavailable(
                f"ClickHouse client for {label} failed while {doing}: {type(exc).__name__}: {exc}"
            ) from exc
        # the driver encoding a value it has no check for (NaN into a Decimal raises a bare
        # ValueError): a row's fault, like DataError
        raise RowsRefused(f"{type(exc).__name__}: {exc}"[:500], row_level=True) from exc


#: where clickhouse-connect turns Python values into column data
_ENCODING_CODE = ("/clickhouse_connect/datatypes/", "/clickhouse_connect/driverc/")


def _raised_while_encoding(exc: BaseException) -> bool:
    """Whether ``exc`` came out of the driver's value encoding (a row's fault) rather than
    from anywhere else in the client (the transport, the pool: not the rows' fault)."""
    tb = exc.__traceback__
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if any(part in path for part in _ENCODING_CODE):
            return True
        tb = tb.tb_next
    return False


def _code_of(exc: BaseException) -> int | None:
    match = re.search(r"\bCode:\s*(\d+)", str(exc))
    return int(match.group(1)) if match else None
