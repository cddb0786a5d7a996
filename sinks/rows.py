"""Conversion of a Decision as read from Kafka into a ``governance.decisions`` row."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from baton.schemas.decision import DECISION_FIELDS, Decision

__all__ = ["DECISION_COLUMNS", "REJECTED_COLUMNS", "decision_row", "usd"]

#: the table's columns the sink writes: every Decision field, then where the copy was read
DECISION_COLUMNS: tuple[str, ...] = (
    *DECISION_FIELDS,
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
)

_MICRO = Decimal("0.000001")
_TIME_FIELDS = frozenset({"approval_expires_at", "event_time", "decided_at"})
_USD_FIELDS = frozenset({"spent_usd", "reserved_usd"})


def usd(amount: float) -> Decimal:
    """A float dollar amount as the Decimal(18, 6) the table stores (banker's rounding).

    Through ``repr`` so 0.1 stays 0.100000, not 0.1000000000000000055511151231257827.
    """
    return Decimal(repr(float(amount))).quantize(_MICRO, rounding=ROUND_HALF_EVEN)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # a naive time from a producer is taken as UTC, the only zone Baton writes
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def decision_row(decision: Decision, topic: str, partition: int, offset: int) -> list[Any]:
    """The row for ``decision`` read at ``topic``/``partition``/``offset`` (DECISION_COLUMNS order).

    A decision without ``event_time`` (a control record) gets its ``decided_at``: the table
    is partitioned by event month, and every copy of a decision must land in one partition
    for ReplacingMergeTree to fold them.
    """
    row: list[Any] = []
    decided_at = _utc(decision.decided_at)
    event_time = _utc(decision.event_time) or decided_at
    decided_at = decided_at or event_time
    if event_time is None:
        raise ValueError(
            f"decision {decision.decision_id}: neither event_time nor decided_at is set; "
            "the audit needs a time to partition by"
        )
    for name in DECISION_FIELDS:
        value = getattr(decision, name)
        if name == "event_time":
            value = event_time
        elif name == "decided_at":
            value = decided_at
        elif name in _TIME_FIELDS:
            value = _utc(value)
        elif name in _USD_FIELDS:
            value = usd(value)
        elif hasattr(value, "value"):  # StrEnum members go in as their wire string
            value = value.value
        row.append(value)
    row.extend((topic, partition, offset))
    return row
