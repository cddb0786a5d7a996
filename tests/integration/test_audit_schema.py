"""The audit schema on real chDB: migrations, dedup semantics, views equal to the base table,
analyst queries, trace output, SQL alert rules."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.client import Client

from baton.cli.main import _register, cli
from baton.schemas.decision import DECISION_FIELDS, Decision
from baton.schemas.errors import ConfigError
from baton.sinks.clickhouse import connect
from baton.sinks.schema import Migration, applied_migrations, load_migrations, migrate
from baton.sinks.sink import AuditBatch, write_batch
from baton.sinks.trace import format_trace, load_trace
from tests.audit_support import scenario_decisions, story_run

pytestmark = pytest.mark.integration

QUERIES = Path(__file__).resolve().parents[2] / "docs" / "queries.sql"


@pytest.fixture
def audit(chdb_dir: Path) -> Iterator[Client]:
    client = connect(f"chdb://{chdb_dir}")
    try:
        migrate(client, ttl_days=30)
        yield client
    finally:
        client.close()


def _insert(
    client: Client, decisions: list[Decision], partition: int = 0, first_offset: int = 0
) -> AuditBatch:
    batch = AuditBatch("gov.decisions")
    for i, decision in enumerate(decisions):
        batch.add(partition, first_offset + i, decision.to_json())
    write_batch(client, batch)
    return batch


def _rows(client: Client, sql: str) -> list[tuple[Any, ...]]:
    return sorted(client.query(sql).result_rows, key=repr)


def test_migrations_apply_once_and_are_recorded(audit: Client) -> None:
    versions = [m.version for m in load_migrations()]
    assert applied_migrations(audit).keys() == set(versions)
    assert migrate(audit, ttl_days=30) == []  # a restart applies nothing


def test_a_changed_released_migration_is_refused(audit: Client) -> None:
    first = load_migrations()[0]
    edited = Migration(first.version, first.name, first.sql + "\n-- edited\n")
    with pytest.raises(ConfigError, match=r"0001_decisions\.sql was applied with checksum"):
        migrate(audit, 30, [edited])


def test_retention_follows_the_setting(audit: Client) -> None:
    migrate(audit, ttl_days=7)
    ddl = dict(
        audit.query(
            "SELECT name, create_table_query FROM system.tables WHERE database = 'governance'"
        ).result_rows
    )
    assert "toDateTime(event_time) + toIntervalDay(7)" in ddl["decisions"]
    assert "toDateTime(last_at) + toIntervalDay(7)" in ddl["run_summary_state"]


def test_the_table_holds_the_full_decision_record_with_analytics_types(audit: Client) -> None:
    types = dict(
        audit.query(
            "SELECT name, type FROM system.columns "
            "WHERE database = 'governance' AND table = 'decisions'"
        ).result_rows
    )
    assert set(DECISION_FIELDS) <= types.keys()
    for name in ("outcome", "reason", "phase", "tenant"):
        assert types[name] == "LowCardinality(String)", name
    for name in ("owner", "from_agent", "to_agent"):
        assert types[name] == "LowCardinality(Nullable(String))", name
    assert types["spent_usd"] == "Decimal(18, 6)"
    assert types["decided_at"] == types["event_time"] == "DateTime64(6, 'UTC')"
    engine = audit.query(
        "SELECT engine, sorting_key FROM system.tables "
        "WHERE database = 'governance' AND name = 'decisions'"
    ).result_rows[0]
    assert engine == ("ReplacingMergeTree", "tenant, run_id, decision_id")


def test_a_retried_batch_with_its_token_is_stored_once(audit: Client) -> None:
    decisions = story_run("run_tok", "acme")
    batch = _insert(audit, decisions)
    write_batch(audit, batch)  # the retry after a lost reply: same rows, same token
    assert audit.command("SELECT count() FROM governance.decisions") == len(decisions)


def test_copies_with_other_tokens_fold_under_final(audit: Client) -> None:
    decisions = story_run("run_dup", "acme")
    _insert(audit, decisions)
    _insert(audit, decisions, first_offset=100)  # re-read after a crash: other offsets
    assert audit.command("SELECT count() FROM governance.decisions") == 2 * len(decisions)
    assert audit.command("SELECT count() FROM governance.decisions FINAL") == len(decisions)
    audit.command("OPTIMIZE TABLE governance.decisions FINAL")
    assert audit.command("SELECT count() FROM governance.decisions") == len(decisions)


def test_views_agree_with_the_base_table_despite_duplicates(audit: Client) -> None:
    decisions = scenario_decisions(runs=24)
    # three overlapping deliveries, as redelivery and a sink restart would produce
    _insert(audit, decisions[:150], partition=0)
    _insert(audit, decisions[100:], partition=0, first_offset=100)
    _insert(audit, decisions[::7], partition=1, first_offset=5000)
    assert audit.command("SELECT count() FROM governance.decisions") > len(decisions)

    stops_view = _rows(
        audit, "SELECT minute, tenant, reason, stops FROM governance.stops_by_reason_per_minute"
    )
    stops_base = _rows(
        audit,
        """
        SELECT toStartOfMinute(event_time) AS minute, tenant, reason, count()
        FROM governance.decisions FINAL WHERE outcome = 'stop'
        GROUP BY minute, tenant, reason""",
    )
    assert stops_view == stops_base
    assert {r[2] for r in stops_view} >= {
        "ownership_conflict",
        "approval_denied",
        "delegation_depth_exceeded",
        "handoff_budget_exceeded",
    }

    summary_view = _rows(
        audit,
        """
        SELECT tenant, run_id, decisions, stops, handoffs, max_depth, spent_usd, tool_calls,
               final_outcome, final_reason, first_stop_reason
        FROM governance.run_summary""",
    )
    summary_base = _rows(
        audit,
        """
        SELECT tenant, run_id, count(), countIf(outcome = 'stop'), max(handoff_count),
               max(depth), max(spent_usd), max(tool_calls),
               argMax(toString(outcome), (decided_at, audit_offset)),
               argMax(toString(reason), (decided_at, audit_offset)),
               nullIf(argMinIf(toString(reason), (decided_at, audit_offset), outcome = 'stop'), '')
        FROM governance.decisions FINAL GROUP BY tenant, run_id""",
    )
    assert summary_view == summary_base
    assert len(summary_view) == 25

    latency_view = _rows(
        audit,
        "SELECT approval_id, run_id, requested_at, resolved_at, "
        "resolution_reason, latency_s FROM governance.approval_latency",
    )
    latency_base = _rows(
        audit,
        """
        SELECT approval_id, any(run_id),
               minIf(decided_at, outcome = 'approval_required') AS req,
               minIf(decided_at, phase = 'approval') AS res,
               argMinIf(toString(reason), decided_at, phase = 'approval'),
               dateDiff('microsecond', req, res) / 1e6
        FROM governance.decisions FINAL WHERE approval_id IS NOT NULL GROUP BY approval_id""",
    )
    assert latency_view == latency_base
    assert {r[4] for r in latency_view} == {"approval_granted", "approval_denied"}
    assert {r[5] for r in latency_view} == {26.0, 19.0}  # the scenario's turnarounds


def _named_queries() -> list[tuple[str, str]]:
    text = QUERIES.read_text()
    blocks = re.split(r"^-- name: ", text, flags=re.M)[1:]
    return [(b.split("\n", 1)[0].strip(), b.split("\n", 1)[1].strip().rstrip(";")) for b in blocks]


def test_docs_queries_all_run_and_answer_the_scenario(audit: Client) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    _insert(audit, scenario_decisions(runs=12, start=now))
    answers = {name: audit.query(sql) for name, sql in _named_queries()}
    assert set(answers) == {
        "top_stop_reasons_per_tenant",
        "runs_that_hit_shared_budget",
        "agents_in_ownership_conflicts",
        "spend_per_tenant_per_day",
        "approval_turnaround",
        "deepest_delegation",
        "stops_per_minute_last_hour",
    }
    top = answers["top_stop_reasons_per_tenant"].named_results()
    assert ("acme", "ownership_conflict", 1) in [
        (r["tenant"], r["reason"], r["stops"]) for r in top
    ]
    conflicts = {r["agent"]: r for r in answers["agents_in_ownership_conflicts"].named_results()}
    assert conflicts["researcher"]["as_requested"] == 1 and conflicts["billing"]["as_owner"] == 1
    deepest = list(answers["deepest_delegation"].named_results())
    assert deepest[0]["max_depth"] == 3
    spend = sum(r["spent_usd"] for r in answers["spend_per_tenant_per_day"].named_results())
    total = audit.command("SELECT sum(spent_usd) FROM governance.run_summary")
    assert spend == Decimal(str(total))  # the daily increments add up to the runs' totals
    turnaround = {r["tenant"]: r for r in answers["approval_turnaround"].named_results()}
    assert turnaround["acme"]["granted"] + turnaround["globex"]["granted"] == 8
    assert answers["stops_per_minute_last_hour"].result_rows


def test_trace_tells_a_runs_story_in_order(audit: Client) -> None:
    _insert(audit, scenario_decisions(runs=3))
    text = format_trace("run_0001", load_trace(audit, "run_0001"))
    lines = text.splitlines()
    assert lines[0].startswith("Run run_0001  tenant globex  8 decisions  2026-11-25 09:00:01")
    assert lines[1] == "last decision: recorded (run_finished)"
    assert lines[2].startswith("handoffs 3  max depth 3  spent $0.60  tool calls 5  policy ")
    steps = lines[6:]  # summary (3), blank, header, rule
    assert [s.split()[2] for s in steps] == [
        "pre_handoff",
        "post_handoff",
        "pre_handoff",
        "post_handoff",
        "pre_handoff",
        "approval",
        "post_handoff",
        "control",
    ]
    assert "orchestrator -> planner" in steps[0] and steps[0].endswith(" 0.00")
    assert "approval_required" in steps[4] and "requested, expires" in steps[4]
    assert "granted by alice" in steps[5]
    assert re.search(r"researcher -> billing\s+refund\s+billing\s+3\s+3\s+0.60", steps[6])

    stopped = format_trace("run_742", load_trace(audit, "run_742"))
    assert (
        "STOPPED at step 3: ownership_conflict (planner -> researcher, task=refund_check), "
        "fallback single_agent"
    ) in stopped


def test_baton_trace_and_sql_commands_read_the_audit(audit: Client, chdb_dir: Path) -> None:
    _insert(audit, scenario_decisions(runs=3))
    _register()
    runner = CliRunner()
    dsn = f"chdb://{chdb_dir}"
    trace = runner.invoke(cli, ["trace", "run_742", "--dsn", dsn])
    assert trace.exit_code == 0, trace.output
    assert "STOPPED at step 3: ownership_conflict" in trace.output
    missing = runner.invoke(cli, ["trace", "run_0", "--dsn", dsn])
    assert missing.exit_code == 1
    assert "no decisions for run 'run_0'" in missing.output and "run_0000" in missing.output
    sql = runner.invoke(
        cli,
        [
            "sql",
            "SELECT reason, count() AS n FROM governance.decisions FINAL "
            "WHERE outcome = 'stop' GROUP BY reason ORDER BY reason",
            "--dsn",
            dsn,
            "--format",
            "csv",
        ],
    )
    assert sql.exit_code == 0, sql.output
    assert sql.output.splitlines() == [
        "reason,n",
        "approval_denied,1",
        "delegation_depth_exceeded,1",
        "handoff_budget_exceeded,1",
        "ownership_conflict,1",
    ]
    bad = runner.invoke(cli, ["sql", "SELEC 1", "--dsn", dsn])
    assert bad.exit_code == 5 and "Code: 62" in bad.output and "Expected one of" not in bad.output


def test_alert_rules_fire_on_a_stop_storm_and_stay_quiet_otherwise(
    audit: Client, chdb_dir: Path, tmp_path: Path
) -> None:
    _register()
    runner = CliRunner()
    dsn = f"chdb://{chdb_dir}"
    quiet = runner.invoke(cli, ["alerts", "check", "--dsn", dsn])
    assert quiet.exit_code == 0, quiet.output
    assert "ok     tenant_stop_rate" in quiet.output

    recent = datetime.now(UTC) - timedelta(minutes=1)
    _insert(audit, scenario_decisions(runs=12, start=recent))
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: tenant_stop_rate\n    params: {min_decisions: 5, max_stop_rate: 0.1}\n"
    )
    fired = runner.invoke(cli, ["alerts", "check", "--dsn", dsn, "--rules", str(rules)])
    assert fired.exit_code == 1, fired.output
    assert (
        "FIRED  tenant_stop_rate: a tenant's stop rate over the last 5 minutes is above 0.1"
        in fired.output
    )
    assert re.search(r"acme\s+\d+\s+\d+\s+0\.\d+", fired.output)
