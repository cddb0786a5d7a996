"""Which records flagged ``reemitted`` name no decision the audit holds (they are kept as rejected).

Why: the worker publishes a copy of a decision it answers from a run's state (a client retry)
flagged ``reemitted``, and the sink does not store it: the audit keeps the original in its
place. Anyone who can write gov.decisions can flag a forged answer the same way (a client
waiting on its request takes it), and the sink dropped it unread: neither
``governance.decisions`` nor ``governance.rejected`` held it, and `baton audit verify` could
not name it. So a batch's copies are looked up once its rows are stored (the worker publishes
the original first, on the same partition: it is in an earlier batch or in this one), by the
table's sorting key (tenant, run id, decision id: one query a thousand copies, read through
the primary index); a copy whose decision the audit does not hold is a rejected record,
``not_a_copy``, its bytes kept.

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
_PER_QUERY = 1_000


def unheld_copies(client: Client, copies: list[Copy], label: str) -> list[Copy]:
    """The ``copies`` whose decision (tenant, run id, decision id) the audit does not hold, in
    their order. AuditUnavailable when ClickHouse cannot answer (the batch is written again)."""
    keys = list(dict.fromkeys(copy[3:] for copy in copies))
    held: set[tuple[str, ...]] = set()
    with audit_errors(label, "looking up the decisions of re-emitted copies"):
        for at in range(0, len(keys), _PER_QUERY):
            rows = client.query(_LOOKUP, parameters={"keys": keys[at : at + _PER_QUERY]})
            held.update(tuple(str(v) for v in row) for row in rows.result_rows)
    return [copy for copy in copies if copy[3:] not in held]
