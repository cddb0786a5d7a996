"""The audit's retention is bounded where ClickHouse can still reckon its TTL.

ClickHouse evaluates a TTL ``decided_at + INTERVAL n DAY`` as a DateTime, whose last second
is in 2106: with BATON_AUDIT_TTL_DAYS=36500 the date wrapped into the past and the sink kept
no row at all, in the decisions nor in the rejected table, without a word.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from baton.schemas.errors import ConfigError
from baton.schemas.settings import Settings
from baton.sinks.audit_batch import AuditBatch, write_batch
from baton.sinks.clickhouse import connect
from baton.sinks.schema import MAX_AUDIT_TTL_DAYS, migrate
from tests.unit.test_attacks_session5 import _decided
from tests.unit.test_engine_support import handoff


@pytest.mark.parametrize("days", [MAX_AUDIT_TTL_DAYS + 1, 36_500, 100_000])
def test_a_retention_past_clickhouses_dates_is_refused_naming_the_key(days: int) -> None:
    with pytest.raises(ValidationError, match="audit_ttl_days"):
        Settings(audit_ttl_days=days)


def test_migrate_refuses_it_too_saying_why(tmp_path: Path) -> None:
    client = connect(f"chdb://{tmp_path / 'chdb'}", create=True)
    try:
        with pytest.raises(ConfigError, match=r"BATON_AUDIT_TTL_DAYS.*2106.*got 36500"):
            migrate(client, 36_500)
    finally:
        client.close()


def test_the_longest_retention_allowed_keeps_the_rows(tmp_path: Path) -> None:
    decision = _decided([(handoff("h1", "t1", "planner", "researcher"), 0)])[0]
    client = connect(f"chdb://{tmp_path / 'chdb'}", create=True)
    try:
        migrate(client, MAX_AUDIT_TTL_DAYS)
        batch = AuditBatch("gov.decisions", MAX_AUDIT_TTL_DAYS)
        batch.add(0, 0, decision.to_json())
        write_batch(client, batch, "chdb")
        kept = client.query("SELECT count() FROM governance.decisions").result_rows[0][0]
        assert kept == 1
    finally:
        client.close()
