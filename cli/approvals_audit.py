"""Pending approvals as the audit shows them: asked for, not answered, not expired.

An approval is pending when its ``approval_required`` decision is in
``governance.decisions`` and no ``approval``-phase decision that applied an answer (allow,
stop: granted, denied, expired) has the same ``approval_id``. Refused answers (outcome
``recorded``: unsigned, forged, self-approval …) leave it pending, as they do in the worker.

Anyone who can write gov.decisions can put rows of their own into the audit, among them an
``approval_required`` row under a pending approval's id that shows another request
(``processors.approvals.request_problem`` tells: its recorded request does not hash to the
digest an answer signs, or is not what it shows). An answer signs the earliest row of the id
that holds together, and refuses when rows that hold together name different requests; a
row that does not hold together is never the one signed (the earliest row was taken: a forged
copy put ahead of the worker's made the real approval impossible to answer).

The listing pages through the pending rows, oldest first, until it holds ``limit`` approvals
whose rows hold together (one per approval id): rows that do not, which it names, never count
toward the limit (a thousand forged rows put ahead of the real ones hid them all). It reads at
most ``MAX_LISTED_ROWS`` rows, and says so when it stopped there.

Not guaranteed: the audit trails the worker by the sink's batch time (about a second), so an
approval asked for a moment ago may not be listed yet, and one answered a moment ago may still
be; the worker has the last word (a late answer is refused as ``unknown_approval``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from clickhouse_connect.driver.client import Client

from baton.processors.approvals import request_problem
from baton.schemas.decision import AUDIT_FIELDS, DECISION_ADAPTER, Decision, Outcome, Phase
from baton.schemas.errors import BatonError
from baton.sinks.schema import DATABASE

__all__ = ["OpenApproval", "PendingListing", "find_approval", "pending_approvals"]

#: an approval id's ``approval_required`` rows read to find the one an answer may sign (the
#: worker writes one; more are copies someone else put into the audit: with this many put
#: ahead of it, the answer is refused, never signed for one of them)
MAX_ASKED_ROWS = 1000

#: rows one listing reads at most (each parsed and checked: ~50 us): past it, the listing
#: says it stopped rather than read a flood of forged rows for minutes
MAX_LISTED_ROWS = 200_000
#: rows per query of the listing
_PAGE_ROWS = 5000

_COLUMNS = ", ".join(f"d.`{f}`" for f in AUDIT_FIELDS)

#: approval ids that an answer resolved (refused answers do not count)
_ANSWERED = f"""
SELECT approval_id FROM {DATABASE}.decisions
WHERE phase = '{Phase.APPROVAL}' AND outcome != '{Outcome.RECORDED}' AND approval_id IS NOT NULL
"""

_PENDING_SQL = f"""
SELECT {_COLUMNS}
FROM {DATABASE}.decisions AS d FINAL
WHERE d.outcome = '{Outcome.APPROVAL_REQUIRED}'
  AND d.approval_id IS NOT NULL
  AND d.approval_expires_at > now64(6)
  AND ({{run_id:String}} = '' OR d.run_id = {{run_id:String}})
  AND d.approval_id NOT IN ({_ANSWERED})
ORDER BY d.decided_at, d.approval_id, d.decision_id
LIMIT {{limit:UInt32}} OFFSET {{offset:UInt64}}
"""

_ASKED_SQL = f"""
SELECT {_COLUMNS}
FROM {DATABASE}.decisions AS d FINAL
WHERE d.approval_id = {{approval_id:String}} AND d.outcome = '{Outcome.APPROVAL_REQUIRED}'
ORDER BY d.decided_at
LIMIT {MAX_ASKED_ROWS}
"""

_ANSWER_SQL = f"""
SELECT {_COLUMNS}
FROM {DATABASE}.decisions AS d FINAL
WHERE d.approval_id = {{approval_id:String}}
  AND d.phase = '{Phase.APPROVAL}' AND d.outcome != '{Outcome.RECORDED}'
ORDER BY d.decided_at
LIMIT 1
"""


def _decision(row: Any) -> Decision:
    """An audit row as the Decision the worker made: money as float, times in UTC (the
    columns are DateTime64(6, 'UTC'), which clickhouse-connect may return without a zone)."""
    doc = dict(zip(AUDIT_FIELDS, row, strict=True))
    for name, value in doc.items():
        if isinstance(value, Decimal):
            doc[name] = float(value)
        elif isinstance(value, datetime) and value.tzinfo is None:
            doc[name] = value.replace(tzinfo=UTC)
    return DECISION_ADAPTER.validate_python(doc)


class OpenApproval:
    """One approval waiting for an answer: its ``approval_required`` decision, and when."""

    __slots__ = ("asked", "now")

    def __init__(self, asked: Decision, now: datetime) -> None:
        self.asked = asked
        self.now = now

    @property
    def age_s(self) -> float:
        at = self.asked.decided_at or self.asked.event_time or self.now
        return (self.now - at).total_seconds()

    @property
    def expires_in_s(self) -> float:
        expires = self.asked.approval_expires_at
        return (expires - self.now).total_seconds() if expires else float("inf")


class PendingListing:
    """What a listing found: the pending approvals whose rows hold together (at most the
    limit, one per approval id), the rows that do not with their problem, and whether it
    stopped at ``MAX_LISTED_ROWS`` before the end."""

    __slots__ = ("pending", "skipped", "stopped_at")

    def __init__(self) -> None:
        self.pending: list[OpenApproval] = []
        self.skipped: list[tuple[OpenApproval, str]] = []
        self.stopped_at: int | None = None


def pending_approvals(
    client: Client, run_id: str = "", limit: int = 1000, max_rows: int = MAX_LISTED_ROWS
) -> PendingListing:
    """The pending approvals, oldest first (of ``run_id`` only when given): ``limit`` of
    them whose rows hold together, however many rows that do not come first."""
    listing = PendingListing()
    listed: set[str | None] = set()
    now = datetime.now(UTC)
    offset = 0
    while len(listing.pending) < limit:
        if offset >= max_rows:
            listing.stopped_at = offset
            break
        page = min(_PAGE_ROWS, max_rows - offset)
        params = {"run_id": run_id, "limit": page, "offset": offset}
        rows = client.query(_PENDING_SQL, parameters=params).result_rows
        offset += len(rows)
        for row in rows:
            pending = OpenApproval(_decision(row), now)
            problem = request_problem(pending.asked)
            if problem is not None:
                listing.skipped.append((pending, problem))
            elif pending.asked.approval_id not in listed and len(listing.pending) < limit:
                listed.add(pending.asked.approval_id)
                listing.pending.append(pending)
        if len(rows) < page:
            break
    return listing


def find_approval(client: Client, approval_id: str) -> tuple[Decision | None, Decision | None]:
    """``approval_id``'s ``approval_required`` decision and the decision that resolved it
    (None when it is still open, or when the audit does not know it). The decision is the
    earliest row that holds together, else the earliest row (whose problem the caller names);
    BatonError when rows that hold together name different requests."""
    params = {"approval_id": approval_id}
    asked = client.query(_ASKED_SQL, parameters=params).result_rows
    answered = client.query(_ANSWER_SQL, parameters=params).result_rows
    return (
        _to_sign([_decision(row) for row in asked]),
        _decision(answered[0]) if answered else None,
    )


def _to_sign(rows: list[Decision]) -> Decision | None:
    """Of one approval id's ``approval_required`` rows (oldest first), the one to sign."""
    sound = [row for row in rows if request_problem(row) is None]
    if len({row.request_digest for row in sound}) > 1:
        raise BatonError(
            f"approval {str(rows[0].approval_id)[:80]!a}: the audit holds {len(sound)} "
            "records of it naming different requests (rows someone else wrote): nothing "
            "signed; `baton audit verify` checks the run's rows"
        )
    return sound[0] if sound else (rows[0] if rows else None)
