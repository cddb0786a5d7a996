"""The audit's pure parts: Decision -> row, batches and their dedup tokens, DSNs, rules, output."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from baton.schemas.decision import DECISION_FIELDS, Decision, Outcome, Phase
from baton.schemas.errors import ConfigError
from baton.sinks.clickhouse import parse_dsn
from baton.sinks.query import first_keyword, trailing_format
from baton.sinks.render import render
from baton.sinks.rows import DECISION_COLUMNS, decision_row, usd
from baton.sinks.rules import DEFAULT_RULES, load_rules
from baton.sinks.schema import Migration, load_migrations
from baton.sinks.sink import AuditBatch

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def _decision(**changes: object) -> Decision:
    base = Decision(
        decision_id="d1",
        request_id="r1",
        run_id="run_742",
        tenant="acme",
        phase=Phase.PRE_HANDOFF,
        outcome=Outcome.STOP,
        reason="ownership_conflict",
        from_agent="planner",
        to_agent="researcher",
        task_id="refund_check",
        spent_usd=0.1 + 0.2,
        event_time=NOW,
        decided_at=NOW + timedelta(milliseconds=3),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_every_decision_field_is_a_column_in_record_order() -> None:
    assert DECISION_COLUMNS[: len(DECISION_FIELDS)] == DECISION_FIELDS
    assert DECISION_COLUMNS[len(DECISION_FIELDS) :] == (
        "audit_topic",
        "audit_partition",
        "audit_offset",
    )


def test_row_carries_wire_strings_exact_money_and_where_it_was_read() -> None:
    row = dict(
        zip(DECISION_COLUMNS, decision_row(_decision(), "gov.decisions", 3, 17), strict=True)
    )
    assert row["outcome"] == "stop" and type(row["outcome"]) is str
    assert row["spent_usd"] == Decimal("0.300000")  # not 0.30000000000000004
    assert (row["audit_topic"], row["audit_partition"], row["audit_offset"]) == (
        "gov.decisions",
        3,
        17,
    )


def test_a_decision_without_event_time_is_partitioned_by_its_decision_time() -> None:
    row = dict(
        zip(DECISION_COLUMNS, decision_row(_decision(event_time=None), "t", 0, 0), strict=True)
    )
    assert row["event_time"] == row["decided_at"] == NOW + timedelta(milliseconds=3)


def test_times_are_stored_in_utc_and_naive_times_are_taken_as_utc() -> None:
    paris = timezone(timedelta(hours=1))
    row = dict(
        zip(
            DECISION_COLUMNS,
            decision_row(
                _decision(
                    event_time=datetime(2026, 11, 25, 10, 0, tzinfo=paris),
                    decided_at=datetime(2026, 11, 25, 9, 0),
                ),
                "t",
                0,
                0,
            ),
            strict=True,
        )
    )
    assert row["event_time"] == NOW and row["event_time"].tzinfo == UTC
    assert row["decided_at"] == NOW


def test_a_decision_with_no_time_at_all_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="decision d1: neither event_time nor decided_at"):
        decision_row(_decision(event_time=None, decided_at=None), "t", 0, 0)


@pytest.mark.parametrize(
    ("amount", "stored"),
    [
        (0.1, "0.100000"),
        (1234.5678901, "1234.567890"),
        (0.0000005, "0.000000"),
        (0.0000015, "0.000002"),
        (0.0, "0.000000"),
    ],
)
def test_usd_rounds_to_micro_dollars_half_even(amount: float, stored: str) -> None:
    assert str(usd(amount)) == stored


def test_batch_token_names_each_partitions_offset_range() -> None:
    batch = AuditBatch("p.gov.decisions")
    for partition, offset in [(2, 10), (0, 5), (2, 11), (0, 6), (2, 12)]:
        batch.add(partition, offset, _decision(decision_id=f"d{offset}").to_json())
    assert batch.token() == "p.gov.decisions/0:5-6,2:10-12"
    assert batch.commit_offsets() == {0: 7, 2: 13}
    assert len(batch) == 5


def test_a_record_that_is_not_a_decision_is_kept_as_rejected_with_its_bytes() -> None:
    batch = AuditBatch("gov.decisions")
    batch.add(1, 40, b'{"decision_id": "x"}')
    batch.add(1, 41, None)
    batch.add(1, 42, _decision().to_json())
    assert len(batch.rows) == 1 and len(batch.rejected) == 2
    topic, partition, offset, error, raw = batch.rejected[0]
    assert (topic, partition, offset, raw) == ("gov.decisions", 1, 40, '{"decision_id": "x"}')
    assert "request_id" in error  # names a missing field
    assert batch.commit_offsets() == {1: 43}  # rejects are committed too: they are stored


def test_revoked_partitions_leave_the_batch() -> None:
    batch = AuditBatch("t")
    batch.add(0, 1, _decision(decision_id="a").to_json())
    batch.add(1, 1, _decision(decision_id="b").to_json())
    batch.add(1, 2, b"garbage")
    batch.drop_partitions({1})
    assert [r[0] for r in batch.rows] == ["a"] and batch.rejected == []
    assert batch.commit_offsets() == {0: 2}


def test_migrations_are_numbered_and_split_into_statements() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    statements = migrations[0].statements(ttl_days=42)
    assert "CREATE TABLE IF NOT EXISTS governance.decisions" in statements[0]
    assert all("{ttl_days}" not in s for s in statements)
    assert any("INTERVAL 42 DAY" in s for s in statements)


def test_a_semicolon_inside_a_comment_line_does_not_split_a_statement() -> None:
    m = Migration(
        9, "x", "-- a; b\nCREATE TABLE t (x UInt8) -- note; here\nENGINE = Log;\nSELECT 1;\n"
    )
    assert m.statements(1) == [
        "-- a; b\nCREATE TABLE t (x UInt8) -- note; here\nENGINE = Log",
        "SELECT 1",
    ]


def test_migration_checksum_ignores_the_ttl_setting() -> None:
    m = load_migrations()[0]
    assert m.checksum == Migration(m.version, m.name, m.sql).checksum


@pytest.mark.parametrize(
    ("dsn", "kind", "label"),
    [
        ("http://alice:s3cret@ch.example:8123/gov", "http", "http://alice:***@ch.example:8123/gov"),
        ("https://ch.example:8443", "https", None),
        ("chdb:///var/lib/baton/chdb", "chdb", "chdb:/var/lib/baton/chdb"),
        ("chdb://memory", "chdb", "chdb (in memory)"),
    ],
)
def test_dsns_are_classified_and_never_show_the_password(
    dsn: str, kind: str, label: str | None
) -> None:
    target = parse_dsn(dsn)
    assert target.kind == ("http" if kind == "https" else kind)
    if label:
        assert target.label == label
    assert "s3cret" not in target.label


def test_a_relative_chdb_dsn_is_resolved_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_dsn("chdb:.baton/chdb").chdb_path == tmp_path / ".baton" / "chdb"
    assert parse_dsn("chdb://.baton/chdb").chdb_path == tmp_path / ".baton" / "chdb"


def test_an_unknown_dsn_is_refused_naming_the_forms() -> None:
    with pytest.raises(ConfigError, match=r"expected http\(s\)://.*got 'postgres://db'"):
        parse_dsn("postgres://db")


def test_rules_yaml_tunes_a_builtin_and_adds_a_rule(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - name: tenant_stop_rate\n"
        "    params: {max_stop_rate: 0.5}\n"
        "  - name: refunds_stopped\n"
        "    sql: SELECT 1\n"
    )
    rules = {r.name: r for r in load_rules(path)}
    assert rules["tenant_stop_rate"].params["max_stop_rate"] == 0.5
    assert rules["tenant_stop_rate"].params["min_decisions"] == 20  # the rest stays
    assert rules["refunds_stopped"].sql == "SELECT 1"
    assert set(rules) == {r.name for r in DEFAULT_RULES} | {"refunds_stopped"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules:\n  - name: nope\n", r"rules\[0\] \(nope\): not a built-in rule"),
        (
            "rules:\n  - name: x\n    sql: SELECT 1\n    treshold: 3\n",
            r"unknown keys \['treshold'\]",
        ),
        ("rulez: []\n", r"unknown keys \['rulez'\]"),
        ("rules: [\n", "not valid YAML"),
    ],
)
def test_bad_rules_yaml_is_refused_naming_the_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_rules(path)


def test_table_output_aligns_and_counts_rows() -> None:
    out = render(("reason", "stops"), [("ownership_conflict", 12), ("killed", 3)], "table")
    assert out.splitlines() == [
        "reason              stops",
        "------------------  -----",
        "ownership_conflict     12",
        "killed                  3",
        "(2 rows)",
    ]


def test_csv_and_json_output() -> None:
    rows = [("acme", Decimal("0.250000"), NOW, None)]
    cols = ("tenant", "spent_usd", "at", "owner")
    assert (
        render(cols, rows, "csv") == "tenant,spent_usd,at,owner\nacme,0.25,2026-11-25 09:00:00.000,"
    )
    assert render(cols, rows, "json") == (
        '{"tenant":"acme","spent_usd":0.25,"at":"2026-11-25T09:00:00Z","owner":null}'
    )


@pytest.mark.parametrize(
    ("sql", "keyword"),
    [
        ("  -- who stopped\nSELECT 1", "SELECT"),
        ("/* x */ (WITH a AS (SELECT 1) SELECT *)", "WITH"),
        ("insert into t values (1)", "INSERT"),
        ("", ""),
    ],
)
def test_first_keyword_skips_comments_and_parentheses(sql: str, keyword: str) -> None:
    assert first_keyword(sql) == keyword


def test_trailing_format_is_found_only_at_the_end() -> None:
    assert trailing_format("SELECT 1 FORMAT JSONEachRow;") == "JSONEachRow"
    assert trailing_format("SELECT 'FORMAT CSV' AS x") is None


def test_reading_a_chdb_directory_that_does_not_exist_is_an_error_not_an_empty_audit(
    tmp_path: Path,
) -> None:
    from baton.schemas.errors import AuditUnavailable
    from baton.sinks.clickhouse import connect

    missing = tmp_path / "nope" / "chdb"
    with pytest.raises(AuditUnavailable, match=f"no audit at {missing}: the chDB directory"):
        connect(f"chdb://{missing}")
    assert not missing.exists()


def test_chdb_without_the_embedded_extra_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from baton.schemas.errors import MissingExtra
    from baton.sinks.clickhouse import connect

    monkeypatch.setitem(sys.modules, "chdb", None)  # as if not installed: import fails
    with pytest.raises(MissingExtra, match=r"pip install 'baton\[embedded\]'"):
        connect(f"chdb://{tmp_path}")
