"""The audit's mark at a clean stop against the next start's count (cli/audit_mark.py): an
older backup of the same audit, or one emptied in place, kept its id and tables and was taken
(session 34, remaining); a whole data dir restored, a start that crashed, a copy that went on
elsewhere, rows moved to a newer day (H1, session 35); the retention's TTL must never make a
start refuse."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from baton.cli.audit_mark import (
    MARK_COMMANDS,
    MARK_DAYS,
    AuditCount,
    AuditMark,
    _ttl_days,
    carried_over,
    kept_mark,
    mark_path,
    missing,
    packed,
    stop_mark,
)
from baton.cli.stack_file import StackRecord

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)


def _mark(rows: dict[str, int], ttl: int = 7, commands: dict | None = None) -> AuditMark:
    return AuditMark(rows=rows, ttl_days=ttl, commands=commands or {})


def _found(rows: dict[str, int], ttl: int = 7, present: frozenset = frozenset()) -> AuditCount:
    return AuditCount(rows, ttl, {}, present)


def test_the_same_counts_or_more_are_nothing_missing() -> None:
    marked = {"2026-12-08": 10, "2026-12-10": 3}
    assert missing(_mark(marked), _found(dict(marked)), NOW) is None
    more = {"2026-12-08": 11, "2026-12-10": 3, "2026-12-09": 1}
    assert missing(_mark(marked), _found(more), NOW) is None
    assert missing(_mark({}), _found({}), NOW) is None


def test_a_row_stored_again_later_moves_to_a_newer_day_and_is_not_missing() -> None:
    """FINAL keeps a key's newest copy: one stored again (a standalone sink, a re-delivered
    record) left its old day one short, and a day's count refused (H1, session 35)."""
    marked = {"2026-12-05": 1000, "2026-12-10": 3}
    assert missing(_mark(marked), _found({"2026-12-05": 999, "2026-12-10": 4}), NOW) is None


@pytest.mark.parametrize(
    ("found", "said"),
    [
        (
            {},
            "it holds 13 fewer decisions stored since 2026-12-08 than when its stack last "
            "stopped (0 of 13)",
        ),  # emptied in place
        ({"2026-12-08": 10, "2026-12-10": 2}, "1 fewer decisions stored since 2026-12-08"),
        ({"2026-12-08": 9, "2026-12-10": 3}, "(12 of 13)"),  # rows deleted
    ],
)
def test_fewer_rows_since_a_day_within_the_retention_are_missing(
    found: dict[str, int], said: str
) -> None:
    problem = missing(_mark({"2026-12-08": 10, "2026-12-10": 3}), _found(found), NOW)
    assert problem is not None and said in problem
    assert "an older copy of the audit, or rows deleted from it" in problem


def test_days_the_retention_may_have_taken_are_not_compared() -> None:
    marked = _mark({"2026-12-02": 50, "2026-12-03": 40, "2026-12-04": 30})
    # a 7-day TTL at 2026-12-10 12:00: rows of 12-03 expire from 12-10 00:00 on, of 12-04 not
    assert missing(marked, _found({"2026-12-04": 30}), NOW) is None
    problem = missing(marked, _found({"2026-12-04": 29}), NOW)
    assert problem is not None and "(29 of 30)" in problem
    # a day's first second is the bound: 12-03 + 7 days = 12-10 00:00
    one = _mark({"2026-12-03": 1})
    assert missing(one, _found({}), datetime(2026, 12, 9, 23, 59, tzinfo=UTC))
    assert missing(one, _found({}), datetime(2026, 12, 10, 0, 0, tzinfo=UTC)) is None
    # a stack stopped for longer than its retention: nothing can be told, nothing refused
    assert missing(_mark({"2026-11-01": 9}), _found({}), NOW) is None
    # the table's retention lowered since (the sink applies a new one): the smaller counts
    assert missing(_mark({"2026-12-04": 30}, ttl=30), _found({}, ttl=5), NOW) is None


def test_a_copy_that_went_on_without_a_noted_command_is_refused() -> None:
    """Two copies of one audit (same id): the other went on with more rows but without the
    kill switch this one recorded (H1, session 35)."""
    mark = _mark({"2026-12-09": 10}, commands={"kill-1": "2026-12-09", "old": "2026-11-01"})
    more = {"2026-12-09": 10, "2026-12-10": 50}
    problem = missing(mark, _found(more, present=frozenset({"old"})), NOW)
    assert problem is not None and "1 operator command(s)" in problem and "kill-1" in problem
    # one whose day the retention may have taken is not asked for
    assert missing(mark, _found(more, present=frozenset({"kill-1"})), NOW) is None


def test_days_past_the_newest_400_are_summed_by_month() -> None:
    """A retention of up to 20,000 days: a kill row stored 420 days ago was never compared
    (H1, session 35)."""
    rows = {f"2020-{m:02d}-{d:02d}": 1 for m in range(1, 13) for d in range(1, 29)}  # 336
    rows |= {f"2021-{m:02d}-{d:02d}": 2 for m in range(1, 5) for d in range(1, 29)}  # 112
    kept = packed(rows)
    assert len(kept) == MARK_DAYS + 2  # 2020-01 and -02 summed: 448 days, 48 of them older
    assert kept["2020-01-01"] == 28 and kept["2020-02-01"] == 20  # the first 20 of February
    assert sum(kept.values()) == sum(rows.values())
    now = datetime(2031, 1, 1, tzinfo=UTC)
    mark = _mark(kept, ttl=20_000)
    assert missing(mark, _found(rows, ttl=20_000), now) is None
    fewer = dict(rows) | {"2020-01-15": 0}
    problem = missing(mark, _found(fewer, ttl=20_000), now)
    assert problem is not None and "stored since 2020-01-01" in problem


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


def test_the_record_holds_dated_counts_and_command_ids_only(tmp_path: Path) -> None:
    def marked(**fields: object) -> StackRecord:
        return _record(tmp_path, audit_mark={"rows": {"2026-12-10": 3}, "ttl_days": 7} | fields)

    record = marked(commands={"k": "2026-12-10"})
    assert StackRecord.model_validate_json(record.model_dump_json()) == record
    for bad in ({"yesterday": 1}, {"2026-12-10": -1}, {"2026-01-01": 2**63}):
        with pytest.raises(ValidationError):
            marked(rows=bad)
    days = {f"{1000 + i}-01-01": 1 for i in range(1_201)}
    with pytest.raises(ValidationError, match="at most 1200 days"):
        marked(rows=days)
    for commands in (
        {"k": "soon"},
        {"": "2026-12-10"},
        {f"k{i}": "2026-12-10" for i in range(MARK_COMMANDS + 1)},
    ):
        with pytest.raises(ValidationError):
            marked(commands=commands)
    with pytest.raises(ValidationError):
        marked(ttl_days=0)


def test_the_mark_kept_outside_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = mark_path("a" * 32)
    assert path == tmp_path / "state" / "baton" / "audits" / f"{'a' * 32}.json"
    assert kept_mark("a" * 32) is None
    path.parent.mkdir(parents=True)
    path.write_text("not json")
    assert kept_mark("a" * 32) is None  # unreadable: the record's mark still counts
    path.write_text(_mark({"2026-12-10": 3}).model_dump_json())
    assert kept_mark("a" * 32) == _mark({"2026-12-10": 3})


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
    from baton.cli.audit_mark import count_audit
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
        command = (
            "INSERT INTO governance.decisions (decision_id, run_id, tenant, phase, request_id, "
            "decided_at, event_time, inserted_at) VALUES ('k', '', '*', 'control', "
            "'kill_switch:c1', now64(6), now64(6), '2026-11-30 10:00:00')"
        )
        client.command(command)
    finally:
        client.close()
    counted = count_audit(chdb, ["a", "zz"])
    assert counted is not None
    rows = {"2026-12-02": 2, "2026-12-01": 2, "2026-11-30": 1}
    assert (counted.rows, counted.ttl_days) == (rows, 30)
    assert counted.present == {"a"} and counted.commands == {"k": "2026-11-30"}
    client = connect(f"chdb://{chdb}", follow_endpoint=False)
    try:
        client.command("OPTIMIZE TABLE governance.decisions FINAL")
    finally:
        client.close()
    again = count_audit(chdb)
    assert again is not None and again.rows == counted.rows
    (tmp_path / "empty").mkdir()
    assert count_audit(tmp_path / "empty") is None  # no decisions table


def test_every_start_of_the_same_audit_carries_its_mark_and_one_of_another_none(
    tmp_path: Path,
) -> None:
    """A start wrote a record without the mark: once it crashed, the next start had none to
    compare an older copy with (H1, session 35). A mark is a lower bound while the audit grows."""
    ident = "0" * 32
    stopped = _record(
        tmp_path, state="stopped", audit_made=True, audit_mark=_mark({"2026-12-10": 3}, ttl=7)
    )
    kept = {"audit_made": True, "audit_mark": _mark({"2026-12-10": 3}, ttl=7)}
    assert carried_over(stopped, ident) == kept  # with --no-audit too: nothing writes the audit
    assert carried_over(stopped, "f" * 32) == {}  # --forget-audit took another one
    assert carried_over(None, ident) == {} == carried_over(stopped, None)
