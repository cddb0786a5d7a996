"""`baton up` refuses a start whose earlier stack's audit is gone (H2, session 33): the audit
holds the runs' state, kill switches and published policy; without it a start failed open."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from baton.cli.stack_file import StackRecord, read_record, write_record
from baton.cli.up_audit import (
    AUDIT_ID_FILE,
    audit_id,
    audit_kept_checks,
    keep_audit_id,
    refuse_a_lost_audit,
)
from baton.schemas.errors import ConfigError

pytestmark = pytest.mark.unit

ID = "0123456789abcdef0123456789abcdef"


def _record(data_dir: Path, **changes: object) -> StackRecord:
    fields: dict = {
        "state": "stopped",
        "pid": 2**31 - 1,
        "started_at": datetime(2026, 12, 1, tzinfo=UTC),
        "data_dir": data_dir,
        "app_id": "baton",
        "bootstrap": "127.0.0.1:9",
        "partitions": 2,
        "clickhouse_dsn": f"chdb://{data_dir / 'chdb'}",
        "audit_id": ID,
    }
    return StackRecord(**(fields | changes))


def _audit(data_dir: Path, ident: str | None = ID) -> None:
    (data_dir / "chdb" / "metadata" / "governance").mkdir(parents=True)
    (data_dir / "chdb" / "metadata" / "governance.sql").write_text("ATTACH DATABASE")
    (data_dir / "chdb" / "metadata" / "governance" / "decisions.sql").write_text("ATTACH TABLE")
    if ident is not None:
        (data_dir / "chdb" / AUDIT_ID_FILE).write_text(ident + "\n")


def _said() -> tuple[list[str], object]:
    lines: list[str] = []
    return lines, lines.append


@pytest.mark.parametrize(
    ("audit", "problem"),
    [
        (False, "chdb is missing"),
        ("", "its baton-audit.id is missing"),  # emptied, or another audit
        ("f" * 32, "holds another audit (id " + "f" * 32),
        ("not an id", "its baton-audit.id is not an id"),
    ],
)
def test_a_start_without_the_earlier_audit_is_refused_naming_it(
    tmp_path: Path, audit: str | bool, problem: str
) -> None:
    if audit is not False:
        _audit(tmp_path, audit or None)
    lines, say = _said()
    with pytest.raises(ConfigError) as refused:
        refuse_a_lost_audit(tmp_path, _record(tmp_path), False, False, say)
    text = str(refused.value)
    assert problem in text and "--forget-audit" in text and "kill switches" in text
    assert "pid 2147483647" in text
    # --forget-audit starts, saying what is forgotten; --no-audit restores nothing anyway
    refuse_a_lost_audit(tmp_path, _record(tmp_path), False, True, say)
    assert lines and lines[0].startswith("WARNING: --forget-audit: ") and problem in lines[0]
    assert "named with a new id" in lines[0]
    refuse_a_lost_audit(tmp_path, _record(tmp_path), True, False, say)


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a file to another user: root only")
def test_an_id_file_of_another_user_is_named_so(tmp_path: Path) -> None:
    """It read "is not an id" (session 34's remaining): the id was right, its owner not."""
    _audit(tmp_path)
    os.chown(tmp_path / "chdb" / AUDIT_ID_FILE, 12345, 12345)
    with pytest.raises(
        ConfigError, match=r"its baton-audit.id is owned by another user \(uid 12345"
    ):
        refuse_a_lost_audit(tmp_path, _record(tmp_path), False, False, print)


def test_the_same_audit_a_first_start_and_no_audit_recorded_start(tmp_path: Path) -> None:
    lines, say = _said()
    refuse_a_lost_audit(tmp_path, None, False, False, say)  # a first start
    refuse_a_lost_audit(
        tmp_path, _record(tmp_path, clickhouse_dsn=None, audit_id=None), False, False, say
    )
    _audit(tmp_path)
    refuse_a_lost_audit(tmp_path, _record(tmp_path), False, False, say)  # its own audit back
    assert lines == []


def test_a_record_of_a_baton_before_the_id_refuses_when_its_sink_ran_and_the_audit_is_gone(
    tmp_path: Path,
) -> None:
    old = _record(tmp_path, audit_id=None)
    refuse_a_lost_audit(tmp_path, old, False, False, print)  # its sink never ran: nothing lost
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "sink.log").write_text("")
    with pytest.raises(ConfigError, match=r"holds no audit tables, though .*sink.log shows"):
        refuse_a_lost_audit(tmp_path, old, False, False, print)
    _audit(tmp_path, None)  # its audit, from before the id: taken, and named now
    refuse_a_lost_audit(tmp_path, old, False, False, print)
    new = keep_audit_id(tmp_path, old, False)
    assert audit_id(tmp_path / "chdb") == new != ID


def test_a_start_names_its_audit_once_and_keeps_the_id(tmp_path: Path) -> None:
    first = keep_audit_id(tmp_path, None, False)
    path = tmp_path / "chdb" / AUDIT_ID_FILE
    assert len(first) == 32 and audit_id(tmp_path / "chdb") == first
    assert path.stat().st_mode & 0o077 == 0
    assert keep_audit_id(tmp_path, _record(tmp_path, audit_id=first), False) == first
    # --no-audit keeps the earlier record's id for the next start to check, writes nothing
    other = tmp_path / "other"
    assert keep_audit_id(other, _record(other), True) == ID and not (other / "chdb").exists()


def test_doctor_flags_a_data_dir_whose_audit_is_gone(tmp_path: Path) -> None:
    write_record(_record(tmp_path))
    (line,) = audit_kept_checks(tmp_path)
    assert line.status.name == "FAIL" and "refuses to start" in line.detail
    assert "--forget-audit" in line.hint
    _audit(tmp_path)
    (line,) = audit_kept_checks(tmp_path)
    assert line.status.name == "OK"


def test_baton_up_refuses_before_it_starts_anything(tmp_path: Path) -> None:
    write_record(_record(tmp_path))
    before = read_record(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    out = subprocess.run(
        [sys.executable, "-m", "baton.cli", "up", "--data-dir", str(tmp_path), "--sql-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 2, out.stderr
    assert "is not there" in out.stderr and "--forget-audit" in out.stderr
    assert "starting the embedded Kafka broker" not in out.stderr
    assert read_record(tmp_path) == before and not (tmp_path / "logs").exists()


def test_the_id_kept_with_the_audit_tables_gone_is_refused(tmp_path: Path) -> None:
    """H1, session 34: chdb/{metadata,store,data} deleted, the id file kept: it started."""
    _audit(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "sink.log").write_text("")
    made = _record(tmp_path, audit_made=True)
    refuse_a_lost_audit(tmp_path, made, False, False, print)  # all there
    # the database's file kept, its tables deleted (H2, session 34): refused too
    (tmp_path / "chdb" / "metadata" / "governance" / "decisions.sql").unlink()
    with pytest.raises(ConfigError, match="holds the audit's id but not its tables"):
        refuse_a_lost_audit(tmp_path, made, False, False, print)
    (line,) = audit_kept_checks_for(tmp_path, made)
    assert line.status.name == "FAIL"


def audit_kept_checks_for(data_dir: Path, record: StackRecord) -> list:
    write_record(record)
    return audit_kept_checks(data_dir)


def test_a_start_stopped_before_its_audit_was_made_restarts(tmp_path: Path) -> None:
    """H2, session 34: a first start stopped within a second left a sink's log and no tables,
    and every later start was refused, pointing at a backup that never existed."""
    (tmp_path / "chdb").mkdir()
    (tmp_path / "chdb" / AUDIT_ID_FILE).write_text(ID + "\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "sink.log").write_text("")
    refuse_a_lost_audit(tmp_path, _record(tmp_path), False, False, print)  # audit_made False


@pytest.mark.parametrize("marked", ["in the record", "outside the data dir"])
def test_a_record_edited_to_say_its_audit_was_never_made_is_refused_when_marked(
    tmp_path: Path, marked: str
) -> None:
    """`audit_made: false` written into stack.json, the tables deleted and the id kept: the
    start took it for a first start stopped early (session 34's remaining). A mark says a
    stop counted the audit's decisions."""
    from baton.cli.audit_mark import AuditMark, mark_path

    (tmp_path / "chdb").mkdir()
    (tmp_path / "chdb" / AUDIT_ID_FILE).write_text(ID + "\n")
    mark = AuditMark(rows={"2026-12-01": 40}, ttl_days=365)
    record = _record(tmp_path)  # audit_made False
    refuse_a_lost_audit(tmp_path, record, False, False, print)  # no mark: a start stopped early
    if marked == "in the record":
        record = _record(tmp_path, audit_mark=mark)
    else:
        mark_path(ID).parent.mkdir(parents=True, exist_ok=True)
        mark_path(ID).write_text(mark.model_dump_json())
    try:
        with pytest.raises(ConfigError, match="holds the audit's id but not its tables"):
            refuse_a_lost_audit(tmp_path, record, False, False, print)
    finally:
        mark_path(ID).unlink(missing_ok=True)


@pytest.mark.parametrize("damage", ["truncated", "gone"])
def test_an_unreadable_or_deleted_record_does_not_forget_the_audit(
    tmp_path: Path, damage: str
) -> None:
    """H1, session 34: a truncated stack.json was taken for no earlier stack: a new audit."""
    write_record(_record(tmp_path))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "sink.log").write_text("")
    record = tmp_path / "stack.json"
    if damage == "truncated":
        record.write_text(record.read_text()[:100])
    else:
        record.unlink()
    with pytest.raises(ConfigError) as refused:
        refuse_a_lost_audit(tmp_path, None, False, False, print)
    said = str(refused.value)
    assert "sink.log shows an audit sink ran" in said
    assert ("cannot be read" if damage == "truncated" else "stack.json is gone") in said


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_an_id_path_that_is_no_file_is_refused_before_anything_starts(
    tmp_path: Path, kind: str
) -> None:
    """H1, session 34: a FIFO there hung --forget-audit in open() with the broker up."""
    (tmp_path / "chdb").mkdir()
    path = tmp_path / "chdb" / AUDIT_ID_FILE
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    for forget in (False, True):
        with pytest.raises(ConfigError, match="is not a regular file"):
            refuse_a_lost_audit(tmp_path, None, False, forget, print)


def test_an_older_copy_taken_with_forget_audit_is_named_anew(tmp_path: Path) -> None:
    """--forget-audit on an older copy of the same audit (H1, session 35): with its id kept,
    the marks of the newer audit refused every later start that did not stop cleanly."""
    _audit(tmp_path)
    assert keep_audit_id(tmp_path, _record(tmp_path), False) == ID
    new = keep_audit_id(tmp_path, _record(tmp_path), False, renew=True)
    assert new != ID and audit_id(tmp_path / "chdb") == new
