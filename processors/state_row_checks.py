"""A run state record's keyed rows (reservations, grants, bounces) read back as the engine wrote
them, or refused.

The engine reads these rows as typed values (texts, counts), and a compiled build
(build_backend/compiled_modules.txt) checks those types where it reads them: a forged row of
another type there raised a ``TypeError`` at every event of the run (an ``engine_error`` dead
letter each, the run never decided again) where the interpreter decided on the forged value.
So each row is checked here, at the read, in both builds alike: a row of another shape or type
is a ``ValueError``, and processors/batch.py refuses the run's events ``state_unreadable``
until the record is repaired (session 11's rule for a task's depth, processors/state_wire.py).
"""

from __future__ import annotations

from typing import Any, Final

from baton.processors.state_types import Reservation
from baton.schemas.events import MAX_RUN_COUNT, MAX_RUN_USD

__all__ = [
    "FORWARDS_KEPT",
    "MAX_OFFSET",
    "MAX_PARTITION",
    "NO_DIGEST",
    "bounces_from_wire",
    "forwarded_from_wire",
    "grants_from_wire",
    "is_count",
    "map_checked",
    "read_from_wire",
    "reservations_from_wire",
    "seq_checked",
    "width_checked",
]

_MAX_COUNT: Final = MAX_RUN_COUNT
_MAX_USD: Final = MAX_RUN_USD
_NUMBERS: Final = frozenset({float, int})
_Reservation: Final = Reservation


def seq_checked(seq: Any) -> int:
    """A stored seq (RunState.seq: an int from 0 to 2**62), or a ValueError."""
    if type(seq) is not int or not 0 <= seq < 1 << 62:
        raise ValueError(f"run state key sq: expected a sequence number, got {str(seq)[:40]!r}")
    return seq  # type: ignore[no-any-return]


def is_count(n: Any) -> bool:
    """``n`` is a count as the engine writes one: an int, never a bool, within MAX_RUN_COUNT."""
    return type(n) is int and 0 <= n <= _MAX_COUNT


def reservations_from_wire(rows: Any, old: bool = False) -> dict[Any, Any]:
    """The run's reservations, each row [request_id, usd, tool_calls, expires_at, task_id]
    under a request id that is text (``old``: formats 1-3, whose rows before format 3 lack
    the last two: a reservation that never expires), its amount a number within
    MAX_RUN_USD, its tool calls a count, its task a text or none, else a ValueError (an
    amount of 1e308 was an engine_error at each event in both builds; its expiry is checked
    by state_wire's ``_timed``)."""
    reserved: dict[Any, Any] = {}
    for row in rows:
        if type(row) is not list or not row or type(row[0]) is not str:
            raise ValueError(
                f"run state key res: expected [request id, usd, tool calls, expires at, task], "
                f"got {str(row)[:80]!r}"
            )
        expiry = row[3] if len(row) > 3 else None  # (checked before a compiled build does)
        if expiry is not None and type(expiry) not in _NUMBERS:
            raise ValueError(
                f"run state key res: expected an expiry in seconds, got {str(row)[:80]!r}"
            )
        if not old:
            held = _Reservation(*row[1:])
        elif len(row) > 3:
            held = _Reservation(row[1], row[2], row[3], row[4])
        else:
            held = _Reservation(row[1], row[2], None, None)
        # read as Any: compiled, a Reservation's typed field read converts a bool to a float
        values: Any = held
        usd, calls, task = values[0], values[1], values[3]
        if not (
            type(usd) in _NUMBERS
            and 0 <= usd <= _MAX_USD  # (NaN fails both)
            and is_count(calls)
            and (task is None or type(task) is str)
        ):
            raise ValueError(
                f"run state key res: expected an amount in USD, a count and a task id or none, "
                f"got {str(row)[:80]!r}"
            )
        reserved[row[0]] = held
    return reserved


def grants_from_wire(rows: Any) -> dict[Any, Any]:
    """The granted handoffs whose reports are not in yet, each row [request_id, task_id,
    agent, names] of three texts and a list of texts (processors/approvals.py), else a
    ValueError."""
    grants: dict[Any, Any] = {}
    for row in rows:
        if not (
            type(row) is list
            and len(row) == 4
            and type(row[0]) is str
            and type(row[1]) is str
            and type(row[2]) is str
            and type(row[3]) is list
            and all(type(name) is str for name in row[3])
        ):
            raise ValueError(
                f"run state key gr: expected [request id, task, agent, [names]], got "
                f"{str(row)[:80]!r}"
            )
        grants[row[0]] = (row[1], row[2], tuple(row[3]))
    return grants


def bounces_from_wire(rows: Any) -> dict[Any, Any]:
    """The agent pairs' bounces, each row [agent, agent, last giver, count] of three names
    and a count (an int, not a bool, within MAX_RUN_COUNT), else a ValueError: rule_chain
    compares the names and adds to the count, and a compiled build checks their types there
    (a TypeError, an ``engine_error``) where the interpreter decided on a forged value."""
    bounces: dict[Any, Any] = {}
    for row in rows:
        if type(row) is not list or len(row) != 4:
            width_checked("bn", row, 4)
        a, b, last, n = row
        if not (type(a) is str and type(b) is str and type(last) is str and is_count(n)):
            raise ValueError(
                f"run state key bn: expected [agent, agent, agent, count], got "
                f"{str([a, b, last, n])[:80]!r}"
            )
        bounces[(a, b)] = (last, n)
    return bounces


def map_checked(w: dict[str, Any]) -> None:
    """A format-4 record's run id and tenant (text), times (numbers: an int made a float, as
    a compiled RunState holds it), marks (an int), keys and digests (lists), pending approvals
    ([approval id, request, expires at, created at]) checked before they are read, else a
    ValueError: a compiled RunState checked them where it stored them (a TypeError of its own
    words, or an int time held as a float and written back so) where the interpreted one held
    the value, so the two builds refused or wrote such a record apart
    (tests/unit/test_compiled_worker_record.py). The other rows are checked where they are
    read (tasks and bounces their widths: a compiled unpack words its error otherwise)."""
    if type(w.get("run")) is not str or type(w.get("tn")) is not str:
        name = "run" if type(w.get("run")) is not str else "tn"
        raise _refused(name, w.get(name), "text")
    started, last = w.get("t0"), w.get("t")
    if type(started) is not float:
        w["t0"] = _seconds("t0", started)
    if type(last) is not float:
        w["t"] = _seconds("t", last)
    evicted = w.get("ev")
    if evicted is not None and type(evicted) is not float:
        w["ev"] = _seconds("ev", evicted)
    if type(w.get("mk", 0)) is not int:  # (any int: a mark past 2**64 too)
        raise _refused("mk", w.get("mk"), "a count")
    if type(w.get("keys", _NO_ROWS)) is not list:
        raise _refused("keys", w.get("keys"), "rows")
    digests = w.get("dg")
    if digests is not None and type(digests) is not list:
        raise _refused("dg", digests, "digests")
    for row in w.get("pend", ()):
        if not (type(row) is list and 3 <= len(row) <= 4 and type(row[0]) is str):
            raise _refused("pend", row, "[approval id, request, expires at, created at]")
        for i in range(2, len(row)):
            if type(row[i]) is not float:
                row[i] = _seconds("pend", row[i])


_NO_ROWS: Final[list[Any]] = []


def width_checked(name: str, row: Any, width: int) -> list[Any]:
    """``row`` when it is a list of ``width`` values, else a ValueError."""
    if type(row) is not list or len(row) != width:
        raise _refused(name, row, f"rows of {width} values")
    return row


def _seconds(name: str, value: Any) -> float:
    """``value``, a time in POSIX seconds, as a float; a ValueError for anything but a
    number (a bool is none)."""
    if type(value) is not int:
        raise _refused(name, value, "a number of seconds")
    return float(value)


def _refused(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"run state key {name}: expected {expected}, got {str(value)[:80]!r}")


#: a position as Kafka gives one: offsets are int64, partitions int32 (batch_routing takes
#: no header position past them: a state holding one would not read back)
MAX_OFFSET: Final = 2**63 - 1
MAX_PARTITION: Final = 2**31 - 1


def read_from_wire(read: Any) -> tuple[int, int, int]:
    """The stored positions read (RunState.read_*: partition, requests and approvals offsets;
    none: -1 each), or a ValueError: a forged one must not cover records it never saw."""
    if read is None:
        return -1, -1, -1
    if (
        type(read) is list
        and len(read) == 3
        and all(type(n) is int for n in read)
        and 0 <= read[0] <= MAX_PARTITION
        and -1 <= read[1] <= MAX_OFFSET
        and -1 <= read[2] <= MAX_OFFSET
    ):
        return read[0], read[1], read[2]
    raise ValueError(
        f"run state key rd: expected [partition, offset, offset], got {str(read)[:60]!r}"
    )


#: forwarded events' positions a run keeps (RunState.forwarded)
FORWARDS_KEPT: Final = 8
#: the digest of a position noted before digests were (a 3-field row): matches any bytes
NO_DIGEST: Final = -1


def forwarded_from_wire(rows: Any) -> tuple[int, ...]:
    """The stored positions of forwarded events decided (RunState.forwarded, flat: approval,
    partition, offset, digest), or a ValueError: at most FORWARDS_KEPT rows of [approval 0/1,
    partition, offset, digest], a row of three (written before digests) read as NO_DIGEST."""
    if rows is None:
        return ()
    if type(rows) is list and len(rows) <= FORWARDS_KEPT:
        flat: list[int] = []
        for row in rows:
            if not (
                type(row) is list
                and (len(row) == 3 or len(row) == 4)
                and all(type(n) is int for n in row)
                and row[0] in (0, 1)
                and 0 <= row[1] <= MAX_PARTITION
                and 0 <= row[2] <= MAX_OFFSET
                and (len(row) == 3 or 0 <= row[3] <= MAX_OFFSET)
            ):
                break
            flat += row if len(row) == 4 else [*row, NO_DIGEST]
        else:
            return tuple(flat)
    raise ValueError(
        f"run state key fw: expected at most {FORWARDS_KEPT} [0 or 1, partition, offset, "
        f"digest] rows, got {str(rows)[:60]!r}"
    )
