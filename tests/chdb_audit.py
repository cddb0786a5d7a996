"""A chDB audit holding given decisions, written as the sink writes them (for unit tests of
replay, verify and restore over a real audit)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from baton.schemas.decision import Decision
from baton.sinks.audit_batch import AuditBatch, write_batch
from baton.sinks.clickhouse import connect
from baton.sinks.schema import migrate


def chdb_audit(chdb: Path, decisions: Iterable[Decision], ttl_days: int = 365) -> Any:
    """A client of a new chDB audit in ``chdb`` holding ``decisions`` (one sink batch, read at
    offsets 0, 1, ... of partition 0); the caller closes it."""
    client = connect(f"chdb://{chdb}", create=True)
    migrate(client, ttl_days)
    batch = AuditBatch("gov.decisions", ttl_days)
    for offset, decision in enumerate(decisions):
        batch.add(0, offset, decision.to_json())
    write_batch(client, batch, "chdb")
    return client
