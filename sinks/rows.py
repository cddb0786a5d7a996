"""Conversion of a Decision as read from Kafka into a ``governance.decisions`` row, range-checked.

Anyone who can write ``gov.decisions`` can put any value in a record. A value the table
cannot hold (a UInt32 count of 2**63, a spend of 1e308, a time in the year 9999) must make
*that record* a ``governance.rejected`` row, not a failed insert that stops the audit: so every
number and time is checked here against its column's range before it reaches ClickHouse.
What is not checked: strings (ClickHouse's String has no length limit, and Kafka's message
size bounds them), and whether a value is *plausible* (a forged decision with a positive spend
is stored like a real one: the sink cannot tell who wrote a record).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from enum import Enum, StrEnum
from operator import attrgetter
from typing import Any, get_args

from pydantic import ValidationError

from baton.schemas.decision import AUDIT_FIELDS, Decision
from baton.schemas.decision_doc import decision_hints
from baton.schemas.record_mac import MacKeys

__all__ = [
    "COMMAND_PREFIXES",
    "DATETIME64_MAX",
    "DATETIME64_MIN",
    "DECISION_COLUMNS",
    "FORGED_ERROR",
    "KEPT_BYTES",
    "MAX_RECORD_BYTES",
    "REJECTED_COLUMNS",
    "DecidedWindow",
    "RejectKind",
    "RowRejected",
    "decision_row",
    "explain_invalid",
    "forged",
    "is_command",
    "oversized",
    "unparsed",
    "usd",
]

#: the table's columns the sink writes: every Decision field, then where the copy was read
DECISION_COLUMNS: tuple[str, ...] = (
    *AUDIT_FIELDS,
    "audit_topic",
    "audit_partition",
    "audit_offset",
)
REJECTED_COLUMNS: tuple[str, ...] = (
    "audit_topic",
    "audit_partition",
    "audit_offset",
    "error",
    "raw",
    "error_kind",
)


class RejectKind(StrEnum):
    """Why a record became a ``governance.rejected`` row (its ``error_kind`` column)."""

    #: not JSON, not a Decision (a missing field, a wrong type), empty, or no time at all
    INVALID_RECORD = "invalid_record"
    #: a number or time outside what its column holds (UInt16/UInt32/Int32/Int64,
    #: Decimal(18, 6), DateTime64's 1900-2299), or not a number at all (NaN, infinity)
    OUT_OF_RANGE = "out_of_range"
    #: decided_at farther from the sink's clock than the audit keeps (see DecidedWindow)
    DECIDED_AT_OUT_OF_WINDOW = "decided_at_out_of_window"
    #: ClickHouse refused the row itself (found by splitting the batch until it was alone)
    REFUSED_BY_CLICKHOUSE = "refused_by_clickhouse"
    #: anything else that failed while converting this one record
    UNCONVERTIBLE = "unconvertible"
    #: flagged ``reemitted`` (a copy of a stored decision) while the audit holds no decision
    #: of its id (``audit_copies``)
    NOT_A_COPY = "not_a_copy"
    #: longer than MAX_RECORD_BYTES: no worker's decision; rejected unparsed, its head kept
    OVERSIZED = "oversized"
    #: no audit MAC of the workers' key (schemas/record_mac.py): not written by a worker of
    #: this deployment; rejected unparsed (only when the sink has the key)
    FORGED = "forged"


#: the longest record the sink parses: no worker publishes a longer one (its publishers refuse
#: a record past Kafka's default message.max.bytes, ``publish_aiokafka.MAX_RECORD_BYTES``; a
#: big policy's ``policy_in_force`` record comes nearest), and the SDK skips one unread (the
#: same bound, ``sdk.channel.MAX_DECISION_BYTES``). Tansu takes a record of any size: one of
#: megabytes was parsed and stored whole (a row, or a rejected record's raw)
MAX_RECORD_BYTES = 1_000_000
#: how much of an oversized record governance.rejected keeps (its raw column)
KEPT_BYTES = 64 * 1024


def oversized(value: bytes | None) -> tuple[bytes, RejectKind, str] | None:
    """What governance.rejected keeps of a record past MAX_RECORD_BYTES (its head, the kind,
    the error), or None: the record is parsed."""
    if value is None or len(value) <= MAX_RECORD_BYTES:
        return None
    error = (
        f"a record of {len(value):,} bytes, over the sink's bound of {MAX_RECORD_BYTES:,} (no "
        f"worker's decision is): not parsed; its first {KEPT_BYTES:,} bytes kept"
    )
    return value[:KEPT_BYTES], RejectKind.OVERSIZED, error


#: what governance.rejected says of a record without the workers' audit MAC
FORGED_ERROR = (
    "no audit MAC of the workers' key (their seal.key or BATON_AUDIT_CHAIN_KEY): not written "
    "by a worker of this deployment (forged), or by a worker with another key; not stored as "
    "a decision"
)


def forged(value: bytes | None, keys: tuple[bytes, ...]) -> tuple[bytes, RejectKind, str] | None:
    """What governance.rejected keeps of a record that carries no audit MAC made with one of
    ``keys`` (the record, the kind, the error), or None: it does, or there are no keys (the
    sink checks nothing), or it is a tombstone (None: the general path's to reject)."""
    if not keys or value is None or _mac_keys(keys).holds(value):
        return None
    return value, RejectKind.FORGED, FORGED_ERROR


def unparsed(value: bytes | None, keys: tuple[bytes, ...]) -> tuple[bytes, RejectKind, str] | None:
    """What governance.rejected keeps of a record rejected before it is parsed (past
    MAX_RECORD_BYTES: ``oversized``; without the workers' audit MAC: ``forged``), or None: the
    rule the sink and `baton replay --from-kafka` share."""
    return oversized(value) or forged(value, keys)


@functools.lru_cache(maxsize=4)
def _mac_keys(keys: tuple[bytes, ...]) -> MacKeys:
    return MacKeys(keys)


class RowRejected(ValueError):
    """One record cannot be a ``governance.decisions`` row; ``kind`` says why."""

    def __init__(self, kind: RejectKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


#: DateTime64's documented range: outside it ClickHouse's date functions (toYYYYMM of the
#: partition key, toDateTime of the TTL) give wrong answers, so such a time is refused
DATETIME64_MIN = datetime(1900, 1, 1, tzinfo=UTC)
DATETIME64_MAX = datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

#: integer columns: Decision field -> (lowest, highest, ClickHouse type)
_INT_RANGES: dict[str, tuple[int, int, str]] = {
    "depth": (0, 2**16 - 1, "UInt16"),
    "handoff_count": (0, 2**32 - 1, "UInt32"),
    "tool_calls": (0, 2**32 - 1, "UInt32"),
    "partition": (-(2**31), 2**31 - 1, "Int32"),
    "offset": (-(2**63), 2**63 - 1, "Int64"),
}
_MICRO = Decimal("0.000001")
#: Decimal(18, 6) holds |x| <= 999999999999.999999; the largest float below 1e12 is
#: 999999999999.9999 (its repr, which usd() rounds)
_USD_LIMIT = 1e12
_TIME_FIELDS = frozenset({"approval_expires_at", "event_time", "decided_at"})
_USD_FIELDS = frozenset({"spent_usd", "reserved_usd"})


@dataclass(frozen=True, slots=True)
class DecidedWindow:
    """The ``decided_at`` values the audit accepts: from ``audit_ttl_days`` before the sink's
    clock to ``ahead`` after it.

    The table is partitioned on ``decided_at`` (and expired on ``inserted_at``, the sink's
    clock, since session 17); a row older than the retention is no worker's decision the sink
    could still be catching up on, and one far in the future would add a partition per
    month. Such a decided_at is forged or from a broken clock: the record goes
    to ``governance.rejected``, kept and visible, never silently dropped. It is not clamped:
    the copies of one decision must keep one decided_at to fold (see 0003's DDL comment).
    """

    earliest: datetime
    latest: datetime
    ttl_days: int

    @classmethod
    def around(
        cls, now: datetime, ttl_days: int, ahead: timedelta = timedelta(days=1)
    ) -> DecidedWindow:
        return cls(now - timedelta(days=ttl_days), now + ahead, ttl_days)

    def check(self, decided_at: datetime) -> None:
        if not self.earliest <= decided_at <= self.latest:
            raise RowRejected(
                RejectKind.DECIDED_AT_OUT_OF_WINDOW,
                f"decided_at: {decided_at.isoformat()} is outside the audit's window "
                f"[{self.earliest.isoformat()}, {self.latest.isoformat()}] (the sink's clock "
                f"minus audit_ttl_days={self.ttl_days}, plus 1 day): the row would expire "
                "at once or outlive the retention",
            )


def usd(amount: float) -> Decimal:
    """A float dollar amount as the Decimal(18, 6) the table stores (banker's rounding).

    Through ``repr`` so 0.1 stays 0.100000, not 0.1000000000000000055511151231257827.
    Raises RowRejected (out_of_range) for NaN, infinities and amounts of 1e12 or more.
    """
    try:
        amount = float(amount)
    except OverflowError:  # an int past float's range
        amount = math.inf
    if not math.isfinite(amount) or abs(amount) >= _USD_LIMIT:
        raise RowRejected(
            RejectKind.OUT_OF_RANGE,
            f"{amount!r} is not an amount Decimal(18, 6) holds (finite, |x| < 1e12)",
        )
    return Decimal(repr(amount)).quantize(_MICRO, rounding=ROUND_HALF_EVEN)


def _utc(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        # a naive time from a producer is taken as UTC, the only zone Baton writes
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is past datetime's own end in UTC
        utc = None
    if utc is None or not DATETIME64_MIN <= utc <= DATETIME64_MAX:
        raise RowRejected(
            RejectKind.OUT_OF_RANGE,
            f"{name}: {value.isoformat()} is outside DateTime64's range "
            f"[{DATETIME64_MIN:%Y-%m-%d}, {DATETIME64_MAX:%Y-%m-%d %H:%M:%S}] UTC",
        )
    return utc


def _integer(name: str, value: Any) -> Any:
    bounds = _INT_RANGES.get(name)
    if bounds is None or value is None:
        return value
    low, high, column = bounds
    if not low <= value <= high:
        raise RowRejected(
            RejectKind.OUT_OF_RANGE,
            f"{name}: {value} is outside {column}'s range [{low}, {high}]",
        )
    return value


def _enum_fields() -> frozenset[str]:
    hints = decision_hints()  # (a compiled Decision has none: its twin's)
    return frozenset(
        name
        for name in AUDIT_FIELDS
        if any(
            isinstance(t, type) and issubclass(t, Enum)
            for t in (hints[name], *get_args(hints[name]))
        )
    )


# where each kind of field sits in a row: the conversion touches those and copies the rest
_FIELD_VALUES = attrgetter(*AUDIT_FIELDS)
_AT = {name: i for i, name in enumerate(AUDIT_FIELDS)}
_EVENT_TIME, _DECIDED_AT = _AT["event_time"], _AT["decided_at"]
_OTHER_TIMES = tuple(
    (_AT[name], name) for name in sorted(_TIME_FIELDS - {"event_time", "decided_at"})
)
_USD_AT = tuple((_AT[name], name) for name in sorted(_USD_FIELDS))
_INT_AT = tuple((_AT[name], name) for name in _INT_RANGES)
_ENUM_AT = tuple(_AT[name] for name in sorted(_enum_fields()))


def decision_row(
    decision: Decision,
    topic: str,
    partition: int,
    offset: int,
    window: DecidedWindow | None = None,
) -> list[Any]:
    """The row for ``decision`` read at ``topic``/``partition``/``offset`` (DECISION_COLUMNS order).

    Raises RowRejected when a value does not fit its column, or (with ``window``) when
    ``decided_at`` is outside it. A decision without ``event_time`` (a control record) gets
    its ``decided_at``, and one without ``decided_at`` (not the worker's: it always sets one)
    its ``event_time``, which the window then checks.
    """
    row = list(_FIELD_VALUES(decision))
    decided_at = _utc("decided_at", row[_DECIDED_AT])
    event_time = _utc("event_time", row[_EVENT_TIME]) or decided_at
    decided_at = decided_at or event_time
    if event_time is None or decided_at is None:
        raise RowRejected(
            RejectKind.INVALID_RECORD,
            f"decision {decision.decision_id[:200]!r}: neither event_time nor decided_at is "
            "set; the audit needs the time it was decided",
        )
    if window is not None:
        window.check(decided_at)
    row[_EVENT_TIME], row[_DECIDED_AT] = event_time, decided_at
    for i, name in _OTHER_TIMES:
        if row[i] is not None:
            row[i] = _utc(name, row[i])
    for i, name in _USD_AT:
        try:
            row[i] = usd(row[i])
        except RowRejected as exc:
            raise RowRejected(exc.kind, f"{name}: {exc}") from None
    for i, name in _INT_AT:
        _integer(name, row[i])
    for i in _ENUM_AT:  # StrEnum members go in as their wire string
        if row[i] is not None:
            row[i] = row[i].value
    row.extend((topic, partition, offset))
    return row


def explain_invalid(exc: ValidationError) -> str:
    """A pydantic error as one line per problem: the field, what was expected, what came."""
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "record"
        got = repr(error.get("input"))
        got = got if len(got) <= 80 else got[:77] + "..."
        problems.append(f"{where}: {error['msg']} (got {got})")
    more = f"; and {exc.error_count() - 5} more" if exc.error_count() > 5 else ""
    return "not a Decision: " + "; ".join(problems) + more


#: the request ids of the decision on an operator's command (a kill switch, its release, a
#: policy update): a `baton up` restart re-issues the commands, and the sink stores each
#: decision once (``audit_controls``); the shortcuts leave them to the general path
COMMAND_PREFIXES = ("kill_switch:", "kill_switch_released:", "policy_updated:")


def is_command(phase: object, request_id: object) -> bool:
    """Whether a record's phase and request id (as read, or as the Decision holds them) are
    those of the decision on an operator's command."""
    return (
        phase == "control" and type(request_id) is str and request_id.startswith(COMMAND_PREFIXES)
    )
