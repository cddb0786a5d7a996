"""Which records flagged ``reemitted`` name no decision the audit holds (they are kept as rejected).

Why: the worker publishes a copy of a decision it answers from a run's state (a client retry)
flagged ``reemitted``, and the sink does not store it: the audit keeps the original in its
place. Anyone who can write gov.decisions can flag a forged answer the same way (a client
waiting on its request takes it), and the sink dropped it unread: neither
``governance.decisions`` nor ``governance.rejected`` held it, and `baton audit verify` could
not name it. So a batch's copies are looked up once its rows are stored (the worker publishes
the original first, on the same partition: it is in an earlier batch or in this one), by the
table's sorting key (tenant, run id, decision id: one query per 64 KiB of them, read through
the primary index; one naming an id or a reason longer than the worker writes is not looked
up); a copy whose decision the audit does not hold is a rejected record, ``not_a_copy``, its
bytes kept.

A copy is its original's only when it says what the original said: the same outcome, reason
and chain hash (a worker's copy is the state's decision with the retry's input, nothing else
changed). A forged ``allow`` flagged ``reemitted`` under the id of a stored ``stop`` was
dropped as a copy, so the one record that made a waiting client proceed left no trace in the
audit at all; it is ``not_a_copy`` now, its bytes kept.

Not guaranteed: that a kept copy is the worker's (one saying what a stored decision says
under its id is dropped as a real one is: it adds nothing the audit lacks); a real copy
whose original was rejected (or refused by ClickHouse) is rejected too, as its original was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clickhouse_connect.driver.client import Client

from baton.sinks.clickhouse import audit_errors
from baton.sinks.rows import RejectKind
from baton.sinks.schema import DATABASE

if TYPE_CHECKING:
    from baton.sinks.audit_batch import AuditBatch

__all__ = ["LONGEST", "Copy", "lookup_parts", "reject_unheld_copies", "unheld_copies"]

#: (partition, offset, record, tenant, run id, decision id, outcome, reason, chain hash or
#: "") of a record flagged reemitted: the key it is looked up by, then what it must repeat
Copy = tuple[int, int, bytes, str, str, str, str, str, str]

#: through the primary index (``ids``), then what the copy says (``keys``)
_LOOKUP = (
    f"SELECT DISTINCT tenant, run_id, decision_id, outcome, reason, ifNull(chain_hash, '') "
    f"FROM {DATABASE}.decisions "
    "WHERE (tenant, run_id, decision_id) IN {ids:Array(Tuple(String, String, String))} "
    "AND (tenant, run_id, decision_id, outcome, reason, ifNull(chain_hash, '')) "
    "IN {keys:Array(Tuple(String, String, String, String, String, String))}"
)
#: the longest id or tenant the worker writes (``schemas.events.Id``, names): a copy naming a
#: longer one is no worker's copy, and is never sent to ClickHouse (a 300 KB id in a query
#: parameter would fail the lookup, and with it the batch, for ever)
LONGEST = 256
#: bytes of keys per lookup (a query parameter travels in the URL over HTTP)
_BYTES_PER_QUERY = 64 * 1024


def unheld_copies(client: Client, copies: list[Copy], label: str) -> list[Copy]:
    """The ``copies`` whose decision (tenant, run id, decision id, saying the same outcome,
    reason and chain hash) the audit does not hold, in their order. AuditUnavailable when
    ClickHouse cannot answer (the batch is written again)."""
    keys = [k for k in dict.fromkeys(c[3:] for c in copies) if max(map(len, k)) <= LONGEST]
    held: set[tuple[str, ...]] = set()
    with audit_errors(label, "looking up the decisions of re-emitted copies"):
        for part in lookup_parts(keys):
            ids = list(dict.fromkeys(k[:3] for k in part))
            rows = client.query(_LOOKUP, parameters={"ids": ids, "keys": part})
            held.update(tuple(str(v) for v in row) for row in rows.result_rows)
    return [copy for copy in copies if copy[3:] not in held]


def lookup_parts(keys: list[tuple[str, ...]]) -> list[list[tuple[str, ...]]]:
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


def reject_unheld_copies(client: Client, batch: AuditBatch, label: str) -> None:
    """Make the batch's re-emitted copies whose decision the audit lacks rejected records."""
    for partition, offset, value, *_ in unheld_copies(client, batch.copies, label):
        error = (
            "flagged reemitted, but the audit holds no decision of its id saying its outcome, "
            "reason and chain hash: not a copy"
        )
        batch.reject(partition, offset, value, RejectKind.NOT_A_COPY, error)
    batch.copies = []
