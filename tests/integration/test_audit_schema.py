"""The audit schema on real chDB: migrations, dedup semantics, views equal to the base table,
analyst queries, trace output, SQL alert rules."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.client import Client

from baton.cli.main import _register, cli
from baton.schemas.decision import AUDIT_FIELDS, Decision, Outcome, Phase, Reason
from baton.schemas.errors import ConfigError
from baton.sinks.clickhouse import connect
from baton.sinks.rows import DECISION_COLUMNS, decision_row
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
        # the retention counts from decided_at: ten years keeps the fixed-date scenarios
        # (T0) in it for as long as this code lives
        migrate(client, ttl_days=3650)
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
    assert migrate(audit, ttl_days=3650) == []  # a restart applies nothing


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
    assert "toDateTime(inserted_at) + toIntervalDay(7)" in ddl["decisions"]
    assert "toDateTime(inserted_at) + toIntervalDay(7)" in ddl["decision_variants"]
    assert "toDateTime(last_at) + toIntervalDay(7)" in ddl["run_summary_state"]
    assert "minute + toIntervalDay(7)" in ddl["stops_per_minute_state"]


def test_the_table_holds_the_full_decision_record_with_analytics_types(audit: Client) -> None:
    types = dict(
        audit.query(
            "SELECT name, type FROM system.columns "
            "WHERE database = 'governance' AND table = 'decisions'"
        ).result_rows
    )
    assert set(AUDIT_FIELDS) <= types.keys()
    assert "reemitted" not in types  # a re-emitted copy is never stored, its flag neither
    assert types["input"] == "Nullable(String)"
    for name in ("outcome", "reason", "phase", "tenant"):
        assert types[name] == "LowCardinality(String)", name
    for name in ("owner", "from_agent", "to_agent"):
        assert types[name] == "LowCardinality(Nullable(String))", name
    assert types["spent_usd"] == "Decimal(18, 6)"
    assert types["decided_at"] == types["event_time"] == "DateTime64(6, 'UTC')"
    engine = audit.query(
        "SELECT engine, sorting_key, partition_key FROM system.tables "
        "WHERE database = 'governance' AND name = 'decisions'"
    ).result_rows[0]
    # partitioned on the worker's clock: a client's event_time cannot expire or scatter rows
    assert engine == ("ReplacingMergeTree", "tenant, run_id, decision_id", "toYYYYMM(decided_at)")


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
        SELECT toStartOfMinute(decided_at) AS minute, tenant, reason, count()
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
               minIf(decided_at, phase = 'approval' AND outcome != 'recorded') AS res,
               argMinIf(toString(reason), decided_at, phase = 'approval' AND outcome != 'recorded'),
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


def test_daily_spend_is_not_split_by_an_operators_kill_record_on_the_run(audit: Client) -> None:
    """An operator's kill and release of a run are recorded under tenant '*' with the run's id
    and no spend: the daily spend must neither charge '*' nor count the run's spend again."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    run = story_run("run_killed_midway", "acme", start=start)
    kill = replace(
        run[2],
        decision_id="kill-run_killed_midway",
        tenant="*",
        phase=Phase.CONTROL,
        outcome=Outcome.RECORDED,
        reason=Reason.KILL_SWITCH,
        spent_usd=0.0,
        decided_at=run[2].decided_at + timedelta(milliseconds=500),
    )
    _insert(audit, [*run, kill])
    sql = dict(_named_queries())["spend_per_tenant_per_day"]
    spend = {r["tenant"]: r["spent_usd"] for r in audit.query(sql).named_results()}
    assert spend == {"acme": Decimal("0.6")}


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
    assert missing.exit_code == 2  # bad input, not a verdict
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
    # a query ClickHouse refuses is bad input (2), not the audit out of reach (5: try again)
    assert bad.exit_code == 2 and "Code: 62" in bad.output and "Expected one of" not in bad.output


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


# --------------------------------------------------------------------------- issue 11


def _recent(decisions: list[Decision], years_of_event_time: int = 0) -> list[Decision]:
    """``decisions`` decided in the last hour, their event_time spread over the past years
    (what a client may send: the audit keeps it as a column, never partitions by it)."""
    now = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for i, d in enumerate(decisions):
        event_time = d.event_time
        if years_of_event_time:
            event_time = now - timedelta(days=(i * 31) % (365 * years_of_event_time))
        out.append(replace(d, decided_at=now + timedelta(seconds=i), event_time=event_time))
    return out


#: columns a release before 0004 did not have
_SINCE_0004 = ("request_digest", "chain_prev", "chain_hash", "input")
_OLD_COLUMNS = [c for c in DECISION_COLUMNS if c not in _SINCE_0004]
_BEFORE_0004 = "SELECT * EXCEPT (inserted_at, request_digest, chain_prev, chain_hash, input)"


def _insert_old(client: Client, decisions: list[Decision], first_offset: int = 0) -> None:
    """What a sink before 0004 wrote: the rows without the columns 0004 added."""
    keep = [DECISION_COLUMNS.index(c) for c in _OLD_COLUMNS]
    rows = []
    for i, d in enumerate(decisions):
        row = decision_row(d, "gov.decisions", 0, first_offset + i)
        rows.append([row[k] for k in keep])
    client.insert("governance.decisions", rows, column_names=_OLD_COLUMNS)


def _old_audit(chdb_dir: Path, decisions: list[Decision]) -> int:
    """A chDB directory as a release before 0003 left it (partitioned by event_time),
    with ``decisions`` in it, some twice; returns the rows stored."""
    client = connect(f"chdb://{chdb_dir}")
    try:
        assert migrate(client, 3650, load_migrations()[:2]) == [1, 2]
        key = "SELECT partition_key FROM system.tables WHERE name = 'decisions'"
        assert client.command(key) == "toYYYYMM(event_time)"
        _insert_old(client, decisions)
        _insert_old(client, decisions[::5], first_offset=10_000)  # redelivered copies
        return int(client.command("SELECT count() FROM governance.decisions"))
    finally:
        client.close()


def test_migration_0003_moves_an_old_audit_to_the_decided_at_layout(chdb_dir: Path) -> None:
    decisions = _recent(scenario_decisions(runs=12), years_of_event_time=5)
    stored = _old_audit(chdb_dir, decisions)
    assert stored > len(decisions)
    client = connect(f"chdb://{chdb_dir}")  # reopened, as `baton sink` after an upgrade
    try:
        before = _rows(client, f"{_BEFORE_0004} FROM governance.decisions")
        assert migrate(client, 3650) == [3, 4, 5, 6, 7, 8, 9, 10, 11]
        assert _rows(client, f"{_BEFORE_0004} FROM governance.decisions") == before
        assert client.command("SELECT count() FROM governance.decisions FINAL") == len(decisions)
        tables = dict(
            client.query(
                "SELECT name, partition_key FROM system.tables WHERE database = 'governance'"
            ).result_rows
        )
        assert tables["decisions"] == "toYYYYMM(decided_at)"
        assert not {"decisions_0003", "decisions_before_0003"} & tables.keys()
        months = {
            str(p)
            for (p,) in client.query(
                "SELECT DISTINCT partition FROM system.parts "
                "WHERE database = 'governance' AND table = 'decisions' AND active"
            ).result_rows
        }
        assert months == {f"{d.decided_at:%Y%m}" for d in decisions}  # type: ignore[union-attr]
        # the views were rebuilt on decided_at and keep being fed through the new table
        stops = "SELECT count() FROM governance.decisions FINAL WHERE outcome = 'stop'"
        view = "SELECT sum(stops) FROM governance.stops_by_reason_per_minute"
        assert client.command(view) == client.command(stops) > 0
        later = _recent(story_run("run_after", "acme"))
        _insert(client, later, first_offset=20_000)
        final = client.command("SELECT count() FROM governance.decisions FINAL")
        assert final == len(decisions) + len(later)
        assert client.command("SELECT sum(decisions) FROM governance.run_summary") == final
        assert client.command(view) == client.command(stops)
        assert migrate(client, 3650) == []
    finally:
        client.close()


def _apply_0003_statements_only(client: Client) -> None:
    """Migration 0003 up to its Python step, as a process that crashed there left it."""
    for statement in load_migrations()[2].statements(3650):
        client.command(statement)


def _ids(client: Client, table: str = "governance.decisions") -> set[str]:
    return {str(r[0]) for r in client.query(f"SELECT decision_id FROM {table}").result_rows}


def test_migration_0003_redone_after_a_crash_during_the_copy(chdb_dir: Path) -> None:
    decisions = _recent(scenario_decisions(runs=6))
    stored = _old_audit(chdb_dir, decisions)
    client = connect(f"chdb://{chdb_dir}")
    try:
        _apply_0003_statements_only(client)
        client.command(  # the copy got part of the way
            "INSERT INTO governance.decisions_0003 SELECT * FROM governance.decisions LIMIT 7"
        )
        assert migrate(client, 3650) == [3, 4, 5, 6, 7, 8, 9, 10, 11]
        assert client.command("SELECT count() FROM governance.decisions") == stored  # not + 7
        assert _ids(client) == {d.decision_id for d in decisions}
        tables = {r[0] for r in client.query("SHOW TABLES FROM governance").result_rows}
        assert "decisions_0003" not in tables
    finally:
        client.close()


def test_migration_0003_after_a_crash_after_the_exchange_moves_late_rows(
    chdb_dir: Path,
) -> None:
    decisions = _recent(scenario_decisions(runs=6))
    _old_audit(chdb_dir, decisions)
    client = connect(f"chdb://{chdb_dir}")
    try:
        _apply_0003_statements_only(client)
        client.command("INSERT INTO governance.decisions_0003 SELECT * FROM governance.decisions")
        client.command("EXCHANGE TABLES governance.decisions AND governance.decisions_0003")
        # then a sink that still ran wrote to the old table (now staged), and the process
        # doing the migration died before moving it
        late = _recent(story_run("run_late", "acme"))
        keep = [DECISION_COLUMNS.index(c) for c in _OLD_COLUMNS]  # a sink before 0004
        client.insert(
            "governance.decisions_0003",
            [
                [row[k] for k in keep]
                for row in (
                    decision_row(d, "gov.decisions", 3, 500 + i) for i, d in enumerate(late)
                )
            ],
            column_names=_OLD_COLUMNS,
        )
        assert migrate(client, 3650) == [3, 4, 5, 6, 7, 8, 9, 10, 11]
        assert _ids(client) == {d.decision_id for d in decisions + late}
        tables = {r[0] for r in client.query("SHOW TABLES FROM governance").result_rows}
        assert not {"decisions_0003", "decisions_before_0003"} & tables
        summary = "SELECT decisions FROM governance.run_summary WHERE run_id = 'run_late'"
        assert client.command(summary) == len(late)  # the move fed the views
    finally:
        client.close()


def test_rows_the_server_refuses_are_isolated_and_the_rest_of_the_batch_stored(
    audit: Client,
) -> None:
    # a constraint stands in for any server-side refusal the sink's own checks do not know
    audit.command("ALTER TABLE governance.decisions ADD CONSTRAINT no_evil CHECK tenant != 'evil'")
    decisions = _recent(scenario_decisions(runs=4))
    evil = {3, 17, 18, len(decisions) - 1}
    decisions = [replace(d, tenant="evil") if i in evil else d for i, d in enumerate(decisions)]
    batch = _insert(audit, decisions)
    kept = {r[0] for r in audit.query("SELECT decision_id FROM governance.decisions").result_rows}
    assert kept == {d.decision_id for i, d in enumerate(decisions) if i not in evil}
    rejected = audit.query(
        "SELECT audit_offset, error_kind, error, raw FROM governance.rejected ORDER BY audit_offset"
    ).result_rows
    assert [r[0] for r in rejected] == sorted(evil)
    assert {r[1] for r in rejected} == {"refused_by_clickhouse"}
    assert "VIOLATED_CONSTRAINT" in rejected[0][2] or "Code: 469" in rejected[0][2]
    assert [Decision.from_json(r[3]).tenant for r in rejected] == ["evil"] * len(evil)
    write_batch(audit, batch)  # a retry of the finished batch writes nothing twice
    assert audit.command("SELECT count() FROM governance.decisions") == len(kept)


def test_a_batch_over_more_than_100_months_is_split_never_refused(audit: Client) -> None:
    # event_time over 20 years: no longer a partition, so one insert holds them all
    spread = _recent(scenario_decisions(runs=20), years_of_event_time=20)
    _insert(audit, spread)
    months = "SELECT uniqExact(toYYYYMM(event_time)) FROM governance.decisions"
    assert audit.command(months) > 100
    # decided_at over 120 months (a retention of ten years allows it): ClickHouse refuses
    # the block (too many partitions); halves are stored, nothing is rejected
    now = datetime.now(UTC)
    old = [
        replace(d, decision_id=f"m{i}", decided_at=now - timedelta(days=30 * i))
        for i, d in enumerate(scenario_decisions(runs=30)[:120])
    ]
    _insert(audit, old, partition=1)
    assert audit.command("SELECT count() FROM governance.decisions FINAL") == len(spread) + 120
    decided_months = (
        "SELECT uniqExact(toYYYYMM(decided_at)) FROM governance.decisions WHERE audit_partition = 1"
    )
    assert audit.command(decided_months) > 100  # more than one insert block may hold
    assert audit.command("SELECT count() FROM governance.rejected") == 0


def test_a_value_the_driver_cannot_encode_is_isolated_like_a_server_refusal(
    audit: Client,
) -> None:
    decisions = _recent(story_run("run_enc", "acme"))
    batch = AuditBatch("gov.decisions")
    for i, d in enumerate(decisions):
        batch.add(0, i, d.to_json())
    # values the sink's own checks refuse, slipped past them: clickhouse-connect raises a
    # bare ValueError for the NaN, a DataError for the UInt32 overflow
    batch.rows[1][DECISION_COLUMNS.index("spent_usd")] = Decimal("NaN")
    batch.rows[4][DECISION_COLUMNS.index("tool_calls")] = 2**63
    write_batch(audit, batch)
    stored = {r[0] for r in audit.query("SELECT decision_id FROM governance.decisions").result_rows}
    assert stored == {d.decision_id for i, d in enumerate(decisions) if i not in (1, 4)}
    rejected = dict(audit.query("SELECT audit_offset, error FROM governance.rejected").result_rows)
    assert rejected.keys() == {1, 4}
    assert "cannot convert NaN" in rejected[1] and "tool_calls" in rejected[4]


def test_the_shared_budget_query_shows_why_the_budget_ran_out(audit: Client) -> None:
    """`any(detail)` showed the later handoffs' "run already stopped" for 2 runs of 3 (H2,
    session 29): the first hit's detail is the one that says why."""
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    base = next(d for d in story_run("budget_run", "acme", now) if d.phase == Phase.POST_HANDOFF)
    hit = replace(
        base,
        decision_id="zz-budget-hit",  # after the later ones in the table's order
        outcome=Outcome.STOP,
        reason=Reason.SHARED_BUDGET_EXCEEDED,
        detail="spent 35.0000 > shared_max_usd 30",
    )
    later = [
        replace(
            hit,
            decision_id=f"budget-later-{i}",
            phase=Phase.PRE_HANDOFF,
            detail="run already stopped",
            decided_at=hit.decided_at + timedelta(seconds=1 + i),
        )
        for i in range(5)
    ]
    _insert(audit, [*later, hit])  # the first hit stored last
    sql = dict(_named_queries())["runs_that_hit_shared_budget"]
    rows = list(audit.query(sql).named_results())
    assert [(r["run_id"], r["detail"], r["phases"]) for r in rows] == [
        ("budget_run", "spent 35.0000 > shared_max_usd 30", ["post_handoff", "pre_handoff"])
    ]


def test_a_run_ids_second_life_adds_its_spend_to_the_day_and_the_trace(audit: Client) -> None:
    """A run id used again once its tombstone is forgotten starts from 0: the daily spend
    took the last running total ($10 then $3 read $3, the later day -$7) and the trace's
    header the largest life's (H2, session 29)."""
    first_day = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1, minutes=10)
    life1 = _linked(story_run("relived", "acme", first_day))
    life2 = _linked(
        [
            replace(d, decision_id=d.decision_id + "-2", request_id=d.request_id + "-2")
            for d in story_run("relived", "acme", first_day + timedelta(days=1))
        ]
    )
    per_life = max(d.spent_usd for d in life1)
    assert per_life > 0
    _insert(audit, [*life1, *life2])
    sql = dict(_named_queries())["spend_per_tenant_per_day"]
    days = sorted((r["day"], r["spent_usd"]) for r in audit.query(sql).named_results())
    assert [spent for _day, spent in days] == [Decimal(str(per_life))] * 2
    text = format_trace("relived", load_trace(audit, "relived"))
    assert f"spent ${2 * per_life:.2f}" in text and "(2 lives of this run id" in text, text


def test_a_refusal_without_the_runs_state_takes_no_spend_back(audit: Client) -> None:
    """Session 30 (H3): a run id's second life began with a refusal the worker decides
    without the run's state (too many runs: unchained, $0); it took part in the first life's
    increments, and the second day read $0 (-$X then +$X)."""
    from baton.processors.engine import refuse
    from baton.schemas.events import HandoffRequested
    from baton.schemas.policy import Policy

    first_day = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1, minutes=10)
    second_day = first_day + timedelta(days=1)
    life1 = _linked(story_run("refused_between", "acme", first_day))
    event = HandoffRequested(
        request_id="x",
        run_id="refused_between",
        tenant="acme",
        task_id="t",
        from_agent="a",
        to_agent="b",
        event_time=second_day,
    )
    _, [refusal] = refuse(None, event, Policy(), second_day, Reason.WORKER_RUN_LIMIT, "full")
    assert refusal.chain_prev is None and refusal.spent_usd == 0
    life2 = _linked(
        [
            replace(
                d,
                decision_id=d.decision_id + "-2",
                request_id=d.request_id + "-2",
                decided_at=d.decided_at + timedelta(seconds=5),
            )
            for d in story_run("refused_between", "acme", second_day)
        ]
    )
    _insert(audit, [*life1, refusal, *life2])
    sql = dict(_named_queries())["spend_per_tenant_per_day"]
    days = sorted((r["day"], r["spent_usd"]) for r in audit.query(sql).named_results())
    per_life = Decimal(str(max(d.spent_usd for d in life1)))
    assert [spent for _day, spent in days] == [per_life] * 2


def _linked(decisions: list[Decision]) -> list[Decision]:
    """``decisions`` chained as a worker chains a run from a fresh state (the first names "")."""
    out, head = [], ""
    for i, d in enumerate(decisions):
        link = f"{abs(hash((d.decision_id, i))):032x}"[-32:]
        out.append(replace(d, chain_prev=head, chain_hash=link))
        head = link
    return out


def test_kill_times_keep_every_kill_record_and_the_ones_stored_before_0009(
    chdb_dir: Path,
) -> None:
    """Migration 0009 (session 38, A2): a restart dates a kill whose row a forger replaced by
    the latest time recorded under its id. decision_variants could not say it (a copy of the
    kill's variant dated earlier replaces it); kill_times keeps every kill record, and the
    ones stored before it (from decision_variants)."""
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.events import KillSwitch
    from baton.schemas.policy import load_policy

    now = datetime.now(UTC) - timedelta(minutes=5)
    kill = KillSwitch(scope="tenant", tenant="acme", operator="oncall", event_time=now)
    _, record = apply_control(NO_KILLS, kill, load_policy(None), now)
    audit = connect(f"chdb://{chdb_dir}")
    assert migrate(audit, 3650, [m for m in load_migrations() if m.version < 9]) != []
    _insert(audit, [record])
    assert migrate(audit, 3650) == [9, 10, 11]
    # a copy of the kill under another phase (the sink stores a command's id once): its
    # variant replaces the kill's in decision_variants, dated earlier
    early = replace(record, decided_at=now - timedelta(minutes=1), phase=Phase.PRE_HANDOFF)
    _insert(audit, [early], first_offset=10)
    _insert(audit, [replace(record, reason=Reason.KILL_SWITCH_RELEASED)], first_offset=11)
    sql = (
        "SELECT count(), max(decided_at) FROM governance.kill_times WHERE decision_id = "
        f"'{record.decision_id}'"
    )
    ((count, latest),) = _rows(audit, sql)
    # the one stored before 0009 twice (from decisions' parts and from decision_variants)
    assert count == 3 and latest.replace(tzinfo=UTC) == record.decided_at
    variants = "SELECT max(decided_at) FROM governance.decision_variants FINAL WHERE reason = "
    ((replaced,),) = _rows(audit, variants + "'kill_switch'")
    assert replaced.replace(tzinfo=UTC) == early.decided_at  # the hole kill_times closes
    audit.close()
