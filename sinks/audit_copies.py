"""Which records flagged ``reemitted`` name no decision the audit holds (they are kept as rejected).

Why: the worker publishes a copy of a decision it answers from a run's state (a client retry)
flagged ``reemitted``, and the sink does not store it: the audit keeps the original in its
place. Anyone who can write gov.decisions can flag a forged answer the same way (a client
waiting on its request takes it), and the sink dropped it unread: neither
``governance.decisions`` nor ``governance.rejected`` held it, and `baton audit verify` could
not name it. So a batch's copies are looked up once its rows are stored (the worker publishes
the original first, on the same partition: it is in an earlier batch or in this one), by the
table's sorting key (tenant, run id, decision id: one query per 64 KiB of them, read through
the primary index; one naming an id longer than the worker writes is not looked up); a copy
whose decision the audit does not hold is a rejected record, ``not_a_copy``, its bytes kept.

Not guaranteed: that a kept copy is the worker's (a forged copy of a stored decision's id is
dropped as a real one is: it adds nothing the audit lacks); a real copy whose original was
rejected (or refused by ClickHouse) is rejected too, as its original was.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from baton.sinks.clickhouse import audit_errors
from baton.sinks.schema import DATABASE

__all__ = ["Copy", "unheld_copies"]

#: (partition, offset, record, tenant, run id, decision id) of a record flagged reemitted
Copy = tuple[int, int, bytes, str, str, str]

_LOOKUP = (
    f"SELECT DISTINCT tenant, run_id, decision_id FROM {DATABASE}.decisions "
    "WHERE (tenant, run_id, decision_id) IN {keys:Array(Tuple(String, String, String))}"
)
#: the longest id or tenant the worker writes (``schemas.events.Id``, names): a copy naming a
#: longer one is no worker's copy, and is never sent to ClickHouse (a 300 KB id in a query
#: parameter would fail the lookup, and with it the batch, for ever)
_LONGEST = 256
#: bytes of keys per lookup (a query parameter travels in the URL over HTTP)
_BYTES_PER_QUERY = 64 * 1024


def unheld_copies(client: Client, copies: list[Copy], label: str) -> list[Copy]:
    """The ``copies`` whose decision (tenant, run id, decision id) the audit does not hold, in
    their order. AuditUnavailable when ClickHouse cannot answer (the batch is written again)."""
    keys = [k for k in dict.fromkeys(c[3:] for c in copies) if max(map(len, k)) <= _LONGEST]
    held: set[tuple[str, ...]] = set()
    with audit_errors(label, "looking up the decisions of re-emitted copies"):
        for part in _parts(keys):
            rows = client.query(_LOOKUP, parameters={"keys": part})
            held.update(tuple(str(v) for v in row) for row in rows.result_rows)
    return [copy for copy in copies if copy[3:] not in held]


def _parts(keys: list[tuple[str, ...]]) -> list[list[tuple[str, ...]]]:
    """``keys`` cut into lookups of at most about ``_BYTES_PER_QUERY`` bytes each."""
    parts: list[list[tuple[str, ...]]] = [[]]
    size = 0
    for key in keys:
        length = sum(len(v.encode("utf-8", "surrogatepass")) for v in key)
        if parts[-1] and size + length > _BYTES_PER_QUERY:
            parts.append([])
            size = 0
        parts[-1].append(key)
        size += length
    return [part for part in parts if part]
