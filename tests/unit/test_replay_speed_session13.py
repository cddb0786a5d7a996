"""`baton replay` toward 50k decisions/s (issue 14, session 13): the audit's queries name the
table's key where they can (ClickHouse then reads what they need, in key order): the page
queries the scope's one tenant, the policies' query the run and tenant of policy records."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.recorded import policy_in_force
from baton.schemas.decision import Decision
from baton.sinks.replay_source import ReplayScope, page_rows, read_pages, read_policies
from tests.chdb_audit import chdb_audit
from tests.helpers import handoff
from tests.unit.test_engine_support import policy_with, seed_policy


class _Recording:
    """A client that keeps the SQL of every page query it passes on."""

    def __init__(self, client: Any) -> None:
        self.client, self.pages, self.queries = client, [], []

    def query(self, sql: str, parameters: Any = None) -> Any:
        self.queries.append(sql)
        return self.client.query(sql, parameters=parameters)

    def raw_query(self, sql: str, parameters: Any = None, fmt: str = "") -> bytes:
        self.pages.append((sql, dict(parameters or {})))
        return self.client.raw_query(sql, parameters=parameters, fmt=fmt)


def _decisions(tenants: list[str]) -> list[Decision]:
    """Three handoffs of two runs per tenant, decided by a worker."""
    proc = BatchProcessor(seed_policy(), 1, {}, worker="w")
    base = datetime.now(UTC) - timedelta(hours=1)
    out: list[Decision] = []
    offset = 0
    for tenant in tenants:
        for run in (f"{tenant}-r1", f"{tenant}-r2"):
            for n in range(3):
                now = base + timedelta(seconds=offset)
                event = handoff(run, n, f"t{n}", tenant=tenant, event_time=now)
                record = InputRecord("req", 0, offset, run.encode(), event.to_json())
                out += [d for _, d in proc.process([record], now).decisions]
                offset += 1
    return out


def _read(client: Any, scope: ReplayScope) -> list[tuple[str, str]]:
    pages = read_pages(client, scope, rows_per_page=4)
    return [(r.run_id, r.decision_id) for page in pages.pages for r in page_rows(page)]


def test_an_audit_of_one_tenant_is_read_in_pages_that_name_it(tmp_path: Path) -> None:
    decisions = _decisions(["acme"])
    client = chdb_audit(tmp_path / "chdb", decisions)
    try:
        recording = _Recording(client)
        read = _read(recording, ReplayScope())
        assert len(recording.pages) > 1
        for sql, params in recording.pages:
            assert "tenant = {only_tenant:String}" in sql and params["only_tenant"] == "acme"
        expected = sorted((d.run_id, d.decided_at, d.decision_id) for d in decisions)
        assert read == [(run, decision) for run, _, decision in expected]
    finally:
        client.close()


def test_an_audit_of_several_tenants_is_read_whole_in_run_order(tmp_path: Path) -> None:
    decisions = _decisions(["zeta", "acme"])
    client = chdb_audit(tmp_path / "chdb", decisions)
    try:
        recording = _Recording(client)
        read = _read(recording, ReplayScope())
        assert all("only_tenant" not in sql for sql, _ in recording.pages)
        expected = sorted((d.run_id, d.decided_at, d.decision_id) for d in decisions)
        assert read == [(run, decision) for run, _, decision in expected]
        # a scope of one tenant names it already: nothing is added
        recording = _Recording(client)
        read = _read(recording, ReplayScope(tenant="zeta"))
        assert all("only_tenant" not in sql for sql, _ in recording.pages)
        assert read == [(run, decision) for run, _, decision in expected if run[0] == "z"]
    finally:
        client.close()


def test_policies_are_read_from_the_policy_records_key_and_a_copy_under_a_run_is_not(
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    record = policy_in_force(seed_policy(), now, "w")
    # another policy's record under a run's id and tenant: no worker writes that (forged)
    other = policy_with(max_handoffs=3)
    forged = replace(policy_in_force(other, now, "w"), run_id="r", tenant="t")
    client = chdb_audit(tmp_path / "chdb", [record, forged])
    try:
        recording = _Recording(client)
        policies, refused = read_policies(recording)
        assert list(policies) == [seed_policy().version] and refused == []
        assert "tenant = '*' AND run_id = '*'" in recording.queries[0]
    finally:
        client.close()
