"""Control decisions (kill switches, releases, policy updates) stored once: the first row of an id.

Why: a `baton up` restart re-issues every recorded kill, signed release and policy update on
the fresh broker, and the worker records each again under the same decision id with the
restart's ``decided_at``. ``governance.decisions`` is a ReplacingMergeTree: ``FINAL`` kept the
re-issue, so the audit said a kill engaged at 07:10:25 was engaged at 07:10:58 (the restart),
after the stops it caused, and `baton trace` listed it there. So the decision on an
operator's command (``rows.is_command``: a control decision whose request id is a kill
switch's, a release's or a policy update's) takes the general path and is kept apart
(``AuditBatch.controls``); once the batch's rows are stored, they are looked up by the table's
sorting key, and one whose id the audit holds saying the same outcome and reason is not
stored again: the first row stays the only one. One the audit holds under its id saying
something else (a command refused before and applied now, or another seal) is stored: it is
news. Other
control decisions are rows like any (a run's ``finished`` record, one a run; the workers'
``policy_in_force`` records, which each worker start restates: their latest row counts).

Guarantee: a redelivered batch stores nothing twice either (its control rows are held by
then, or go in under the same token). What a row says is its outcome, reason and seal
(``processors/control_seal``) and a digest of everything the seal covers (the command, its
ids, operator and time): a forged row's seal is not the worker's, and one that copies the
worker's seal beside another command (stored first, it kept the worker's row out, session 41)
says something else: either way the worker's row is news and stored, and a restart's
re-issue, sealed the same, is not. Not guaranteed: that the row kept is the worker's when a
forged one says all of that (a copy of the worker's record, its unsealed ``decided_at`` or
``detail`` changed: what the restart uses of it is sealed).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from clickhouse_connect.driver.client import Client

from baton.processors.control_seal import SEAL_FIELDS, seal_of
from baton.schemas.decision import DECISION_FIELDS
from baton.sinks.audit_copies import LONGEST, lookup_parts
from baton.sinks.audit_insert import RowsRefused, insert_rows
from baton.sinks.clickhouse import audit_errors
from baton.sinks.rows import DECISION_COLUMNS, RejectKind
from baton.sinks.schema import DATABASE

if TYPE_CHECKING:
    from baton.sinks.audit_batch import AuditBatch

__all__ = ["Control", "store_controls"]

log = logging.getLogger("baton.sinks.sink")

#: a control decision's row (``rows.decision_row``) and the record it was made from
Control = tuple[list[Any], bytes]

_KEY_AT = tuple(DECISION_FIELDS.index(f) for f in ("tenant", "run_id", "decision_id"))
#: what a row says: its outcome, reason and seal (``request_digest``, processors/control_seal)
_SAID_AT = tuple(DECISION_FIELDS.index(f) for f in ("outcome", "reason", "request_digest"))
#: and the whole of what a seal covers (the command, its ids, operator and time), as a digest
_SEALED_AT = tuple(DECISION_FIELDS.index(f) for f in SEAL_FIELDS)
_LOOKUP = (
    f"SELECT DISTINCT tenant, run_id, decision_id, outcome, reason, ifNull(request_digest, ''), "
    f"{', '.join(SEAL_FIELDS)} FROM {DATABASE}.decisions "
    "WHERE (tenant, run_id, decision_id) IN {ids:Array(Tuple(String, String, String))}"
)


def _key(row: list[Any]) -> tuple[str, ...]:
    said = tuple("" if row[i] is None else str(row[i]) for i in (*_KEY_AT, *_SAID_AT))
    return (*said, _content([row[i] for i in _SEALED_AT]))


def _content(values: list[Any]) -> str:
    """A digest of what a seal covers: a row that copies a seal beside another command (or id,
    operator, time) is another row, never the worker's sealed one (which it kept out when
    stored first: the command was then lost to every restart)."""
    return seal_of(b"", values)


def store_controls(
    client: Client, batch: AuditBatch, label: str, types: tuple[str, ...] | None
) -> int:
    """Store the batch's control decisions whose id the audit does not hold saying the same
    outcome and reason (the first of several in the batch), reject the ones ClickHouse
    refuses, and return how many were stored. AuditUnavailable: call again (it resumes)."""
    controls, batch.controls = batch.controls, []
    try:
        held = _held(client, controls, label)
        fresh: dict[tuple[str, ...], Control] = {}
        for control in controls:
            key = _key(control[0])
            if key not in held:
                fresh.setdefault(key, control)
        again = len(controls) - len(fresh)
        if again:
            log.info(
                "audit sink: %d control decision(s) already stored under their ids (a re-issue "
                "after a restart, or a redelivery): the first row kept",
                again,
            )
        return _insert(client, batch, list(fresh.values()), label, types)
    except BaseException:
        batch.controls = controls  # the retry looks them up again
        raise


def _held(client: Client, controls: list[Control], label: str) -> set[tuple[str, ...]]:
    """The (tenant, run id, decision id, outcome, reason) the audit holds of the ids of
    ``controls``; an id longer than any the worker writes is not looked up (no worker's: it
    is stored), and a lookup carries at most about 64 KiB of ids (``audit_copies``)."""
    keys = dict.fromkeys(tuple(str(c[0][i]) for i in _KEY_AT) for c in controls)
    ids = [k for k in keys if max(map(len, k)) <= LONGEST]
    held: set[tuple[str, ...]] = set()
    with audit_errors(label, "looking up stored control decisions"):
        for part in lookup_parts(ids):
            rows = client.query(_LOOKUP, parameters={"ids": part})
            held.update(
                (*(str(v) for v in row[:6]), _content(list(row[6:]))) for row in rows.result_rows
            )
    return held


def _insert(
    client: Client,
    batch: AuditBatch,
    controls: list[Control],
    label: str,
    types: tuple[str, ...] | None,
) -> int:
    """Insert ``controls`` as one block; refused: each alone, a refused one rejected."""
    if not controls:
        return 0
    try:
        insert_rows(client, *_insert_args(batch, controls), label, types)
        return len(controls)
    except RowsRefused:
        pass
    stored = 0
    for control in controls:
        try:
            insert_rows(client, *_insert_args(batch, [control]), label, types)
            stored += 1
        except RowsRefused as exc:
            row, raw = control
            error = f"ClickHouse refused the row: {exc}"
            batch.reject(row[-2], row[-1], raw, RejectKind.REFUSED_BY_CLICKHOUSE, error)
    return stored


def _insert_args(
    batch: AuditBatch, controls: list[Control]
) -> tuple[str, list[list[Any]], tuple[str, ...], str]:
    """(table, rows, columns, token): the token names the rows' places and records (a
    restarted broker numbers from 0 again: a place alone would name an earlier start's row,
    and ClickHouse would drop this insert as that one's)."""
    rows = [list(row) for row, _ in controls]  # insert_rows turns times into ticks in place
    digest = hashlib.blake2b(digest_size=8)
    for row, raw in controls:
        digest.update(f"{row[-2]}:{row[-1]}:{len(raw)}:".encode() + raw)
    token = f"{batch.topic}/controls/{digest.hexdigest()}"
    return f"{DATABASE}.decisions", rows, DECISION_COLUMNS, token
