"""The audit's counts at a clean stop against the next start's (cli/audit_mark.py): an older
backup of the same audit, or one emptied in place, kept its id and tables and was taken
(session 34, remaining); the retention's TTL must never make a start refuse."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from baton.cli.audit_mark import MARK_DAYS, _ttl_days, missing_rows, stop_mark
from baton.cli.stack_file import StackRecord

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)


def test_the_same_counts_or_more_are_nothing_missing() -> None:
    marked = {"2026-12-08": 10, "2026-12-10": 3}
    assert missing_rows(marked, 7, dict(marked), NOW) is None
    assert (
        missing_rows(marked, 7, {"2026-12-08": 11, "2026-12-10": 3, "2026-12-09": 1}, NOW) is None
    )
    assert missing_rows({}, 7, {}, NOW) is None


@pytest.mark.parametrize(
    ("found", "said"),
    [
        (
            {},
            "it holds 13 fewer decisions than when its stack last stopped (0 of the 3 stored on "
            "2026-12-10, and 1 more day(s) short)",
        ),  # emptied in place
        ({"2026-12-08": 10, "2026-12-10": 2}, "1 fewer decisions"),  # an older backup
        ({"2026-12-08": 9, "2026-12-10": 3}, "(9 of the 10 stored on 2026-12-08)"),  # rows deleted
    ],
)
def test_fewer_rows_on_a_day_within_the_retention_are_missing(
    found: dict[str, int], said: str
) -> None:
    problem = missing_rows({"2026-12-08": 10, "2026-12-10": 3}, 7, found, NOW)
    assert problem is not None and said in problem
    assert "an older copy of the audit, or rows deleted from it" in problem


def test_days_the_retention_may_have_taken_are_not_compared() -> None:
    marked = {"2026-12-02": 50, "2026-12-03": 40, "2026-12-04": 30}
    # a 7-day TTL at 2026-12-10 12:00: rows of 12-03 expire from 12-10 00:00 on, of 12-04 not
    assert missing_rows(marked, 7, {"2026-12-04": 30}, NOW) is None
    problem = missing_rows(marked, 7, {"2026-12-04": 29}, NOW)
    assert problem is not None and "(29 of the 30 stored on 2026-12-04)" in problem
    # a day's first second is the bound: 12-03 + 7 days = 12-10 00:00, past at NOW
    assert missing_rows({"2026-12-03": 1}, 7, {}, datetime(2026, 12, 9, 23, 59, tzinfo=UTC))
    assert missing_rows({"2026-12-03": 1}, 7, {}, datetime(2026, 12, 10, 0, 0, tzinfo=UTC)) is None
    # a stack stopped for longer than its retention: nothing can be told, nothing refused
    assert missing_rows({"2026-11-01": 9}, 7, {}, NOW) is None


@pytest.mark.parametrize(
    ("ddl", "days"),
    [
        (
            "CREATE TABLE governance.decisions (...) ENGINE = ReplacingMergeTree ORDER BY (a) "
            "TTL toDateTime(inserted_at) + toIntervalDay(30)\\nSETTINGS index_granularity = 8192",
            30,
        ),
        ("CREATE TABLE d (...)\\nTTL toDateTime(inserted_at) + INTERVAL 30 DAY\\nSETTINGS x", 30),
        ("CREATE TABLE d (...) ENGINE = MergeTree ORDER BY a", 1),  # none: the fewest days
        ("CREATE TABLE d (`ttl` UInt8)\\nENGINE = MergeTree ORDER BY a\\nSETTINGS x = 30", 1),
    ],
)
def test_the_retention_is_read_from_the_table_or_taken_as_one_day(ddl: str, days: int) -> None:
    assert _ttl_days(ddl) == days


def _record(tmp_path: Path, **changes: object) -> StackRecord:
    fields: dict = {
        "state": "running",
        "pid": 12345,
        "started_at": NOW,
        "data_dir": tmp_path,
        "app_id": "baton",
        "bootstrap": "127.0.0.1:9",
        "partitions": 2,
        "clickhouse_dsn": f"chdb://{tmp_path / 'chdb'}",
        "audit_id": "0" * 32,
    }
    return StackRecord(**(fields | changes))


def test_the_record_holds_dated_counts_only(tmp_path: Path) -> None:
    record = _record(tmp_path, audit_rows={"2026-12-10": 3}, audit_ttl_days=7)
    assert StackRecord.model_validate_json(record.model_dump_json()) == record
    for bad in ({"yesterday": 1}, {"2026-12-10": -1}, {"2026-01-01": 2**63}):
        with pytest.raises(ValidationError):
            _record(tmp_path, audit_rows=bad)
    days = {f"{2000 + i // 365}-01-01": 1 for i in range(0, 365 * (MARK_DAYS + 1), 365)}
    with pytest.raises(ValidationError, match=f"at most {MARK_DAYS} days"):
        _record(tmp_path, audit_rows=days)
    with pytest.raises(ValidationError):
        _record(tmp_path, audit_ttl_days=0)


def test_no_counts_without_an_audit(tmp_path: Path) -> None:
    said: list[str] = []
    assert stop_mark(_record(tmp_path, clickhouse_dsn=None), said.append) == {}
    assert stop_mark(_record(tmp_path, audit_id=None), said.append) == {}
    assert stop_mark(_record(tmp_path), said.append) == {}  # no tables made
    assert said == []


@pytest.mark.integration
def test_counts_of_a_real_audit_fold_copies_as_its_merges_do_and_read_the_retention(
    tmp_path: Path,
) -> None:
    """chDB: copies of one key in a partition count once (a merge folds them: the count must
    not fall after one), stored days in UTC, the table's TTL as ClickHouse shows it."""
    from baton.cli.audit_mark import audit_rows
    from baton.sinks.clickhouse import connect
    from baton.sinks.schema import migrate

    chdb = tmp_path / "chdb"
    client = connect(f"chdb://{chdb}", follow_endpoint=False, create=True)
    try:
        migrate(client, 30)
        insert = (
            "INSERT INTO governance.decisions (decision_id, run_id, tenant, decided_at, "
            "event_time, inserted_at) VALUES "
        )
        day = "'2026-12-01 23:59:59.5', '2026-12-01 23:59:59.5', '2026-12-01 23:59:59.5'"
        for ident in ("a", "b", "b"):  # two inserts of b: two parts until a merge
            client.command(insert + f"('{ident}', 'r', 't', {day})")
        client.command(insert + "('c', 'r', 't', now64(6), now64(6), '2026-12-02 00:00:00')")
        # the same key decided in another month is another partition's row: not folded
        client.command(insert + "('b', 'r', 't', '2026-11-01', '2026-11-01', '2026-12-02')")
    finally:
        client.close()
    assert audit_rows(chdb) == ({"2026-12-02": 2, "2026-12-01": 2}, 30)
    client = connect(f"chdb://{chdb}", follow_endpoint=False)
    try:
        client.command("OPTIMIZE TABLE governance.decisions FINAL")
    finally:
        client.close()
    assert audit_rows(chdb) == ({"2026-12-02": 2, "2026-12-01": 2}, 30)
    (tmp_path / "empty").mkdir()
    assert audit_rows(tmp_path / "empty") is None  # no decisions table


def test_a_no_audit_start_keeps_the_counts_and_a_start_of_another_audit_none(
    tmp_path: Path,
) -> None:
    from baton.cli.audit_mark import carried_over

    ident = "0" * 32
    stopped = _record(
        tmp_path, state="stopped", audit_made=True, audit_rows={"2026-12-10": 3}, audit_ttl_days=7
    )
    # a start of the same audit: made, and the counts are the sink's to change from now on
    assert carried_over(stopped, ident, False) == {"audit_made": True}
    # --no-audit writes nothing into the audit: the next start still checks the stop's counts
    assert carried_over(stopped, ident, True) == {
        "audit_made": True,
        "audit_rows": {"2026-12-10": 3},
        "audit_ttl_days": 7,
    }
    assert carried_over(stopped, "f" * 32, True) == {}  # --forget-audit took another one
    assert carried_over(None, ident, True) == {} == carried_over(stopped, None, False)
