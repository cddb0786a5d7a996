"""The stack record of `baton up` and the one order in which client commands find a stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest

from baton.cli import stack_file
from baton.cli.options import PortOrOff, click_type
from baton.cli.stack_file import (
    LOCK_FILE,
    STACK_FILE,
    StackRecord,
    mark_stopped,
    read_record,
    refuse_running_stack,
    write_record,
)
from baton.cli.stack_record import StackNotFound, audit_settings, stack_settings
from baton.schemas.errors import AuditUnavailable, BrokerUnavailable, ConfigError


class Holder:
    """A live process whose command line reads like `baton up` and that holds the stack lock
    of every data dir it is given, as a running `baton up` holds its own."""

    _SCRIPT = (
        "import fcntl, os, sys\n"
        "for line in sys.stdin:\n"
        "    fd = os.open(line.strip(), os.O_RDWR | os.O_CREAT)\n"
        "    fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "    print('locked', flush=True)\n"
    )

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self._SCRIPT, "baton", "up"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self.locked: set[Path] = set()

    def lock(self, data_dir: Path) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if data_dir.resolve() in self.locked:  # a second flock of its own would wait forever
            return
        self.locked.add(data_dir.resolve())
        self.proc.stdin.write(f"{data_dir / LOCK_FILE}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "locked"


@pytest.fixture
def baton_up() -> Iterator[Holder]:
    holder = Holder()
    try:
        yield holder
    finally:
        holder.proc.kill()
        holder.proc.wait()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("BATON_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _record(data_dir: Path, pid: int | Holder, **changes: object) -> StackRecord:
    data_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(pid, Holder):
        pid.lock(data_dir)
        pid = pid.pid
    fields: dict[str, object] = {
        "state": "running",
        "pid": pid,
        "started_at": datetime.now(UTC),
        "data_dir": data_dir.resolve(),
        "app_id": "baton",
        "bootstrap": "127.0.0.1:19092",
        "topic_prefix": "stack.",
        "partitions": 4,
        "clickhouse_dsn": f"chdb://{data_dir.resolve() / 'chdb'}",
        "sql_url": "http://127.0.0.1:18123",
    }
    record = StackRecord.model_validate(fields | changes)
    write_record(record)
    return record


def stale_lock_is_ours(data_dir: Path) -> bool:
    """This process holds ``data_dir``'s lock (another process sees it held)."""
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(data_dir / LOCK_FILE)], capture_output=True, text=True
    )
    return probe.stdout.strip() == "held"


_PROBE = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "try:\n"
    "    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)\n"
    "    print('free')\n"
    "except BlockingIOError:\n"
    "    print('held')\n"
)


def release_locks() -> None:
    """Let go of the locks ``refuse_running_stack`` took in this test process."""
    while stack_file._held_locks:
        os.close(stack_file._held_locks.pop())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_record_reads_back_as_written_and_is_replaced_atomically(
    tmp_path: Path, baton_up: Holder
) -> None:
    record = _record(tmp_path / ".baton", baton_up)
    assert read_record(tmp_path / ".baton") == record
    assert record.live()
    left = sorted(p.name for p in (tmp_path / ".baton").iterdir())
    assert left == [STACK_FILE, LOCK_FILE]  # no temp file left
    stopped = mark_stopped(record)
    assert read_record(tmp_path / ".baton") == stopped
    assert stopped.state == "stopped" and stopped.stopped_at is not None
    assert not stopped.live()


def test_no_record_is_none_and_a_bad_one_is_an_error_naming_the_file(tmp_path: Path) -> None:
    assert read_record(tmp_path) is None
    path = tmp_path / STACK_FILE
    for text, problem in (
        ("{not json", "not a `baton up` record"),
        ('{"state": "running"}', "pid: Field required"),
        ("x" * 70_000, "is larger than 65536 bytes"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError) as bad:
            read_record(tmp_path)
        assert str(path) in str(bad.value) and problem in str(bad.value)
    path.unlink()
    os.mkfifo(path)  # reading a FIFO would block forever
    with pytest.raises(ConfigError, match="not a regular file"):
        read_record(tmp_path)


@pytest.mark.parametrize("bootstrap", ["host:port", "", "a:99999"])
def test_a_forged_bootstrap_in_a_record_is_refused(tmp_path: Path, bootstrap: str) -> None:
    good = _record(tmp_path, 1).model_dump(mode="json")
    (tmp_path / STACK_FILE).write_text(json.dumps(good | {"bootstrap": bootstrap}))
    with pytest.raises(ConfigError, match="not a `baton up` record"):
        read_record(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_record_or_endpoint_file_another_user_owns_is_not_followed(tmp_path: Path) -> None:
    # H2 (session 27, F2): another user's ./.baton (a stack.json and a process whose argv
    # says `baton up` holding its lock) had `baton kill` engage a kill on their broker and
    # report success; their endpoint file sent `sql`, `trace`, `approvals` to their "audit"
    from baton.sinks.clickhouse import ENDPOINT_FILE, endpoint_record

    good = _record(tmp_path, 1).model_dump(mode="json")
    path = tmp_path / STACK_FILE
    path.write_text(json.dumps(good))
    assert read_record(tmp_path) is not None
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError) as foreign:
        read_record(tmp_path)
    assert f"owned by another user (uid 65534, you are {os.geteuid()})" in str(foreign.value)
    assert "a --data-dir of your own" in str(foreign.value)
    endpoint = tmp_path / ENDPOINT_FILE
    endpoint.write_text(json.dumps({"dsn": "http://baton:t@127.0.0.1:1", "pid": os.getpid()}))
    assert endpoint_record(endpoint)["pid"] == os.getpid()
    os.chown(endpoint, 65534, 65534)
    assert endpoint_record(endpoint) == {}


def test_a_live_pid_that_is_not_baton_up_is_not_the_stack(tmp_path: Path) -> None:
    # this test process is alive but runs pytest: a reused pid must not pass for the stack
    assert not _record(tmp_path, os.getpid()).live()
    assert not _record(tmp_path, _dead_pid()).live()


def test_a_client_takes_kafka_from_the_record_in_the_current_folder(baton_up: Holder) -> None:
    _record(Path(".baton"), baton_up)
    settings = stack_settings({"bootstrap": None, "topic_prefix": None})
    assert settings.bootstrap == "127.0.0.1:19092"
    assert settings.topic_prefix == "stack." and settings.partitions == 4


def test_the_flag_then_data_dir_then_variable_then_baton_data_dir(
    tmp_path: Path, baton_up: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _record(Path(".baton"), baton_up)
    other = _record(tmp_path / "other", baton_up, bootstrap="127.0.0.1:29092")
    # an explicit --bootstrap wins over everything
    assert stack_settings({"bootstrap": "k:1"}, other.data_dir).bootstrap == "k:1"
    # --data-dir on the command line wins over BATON_BOOTSTRAP
    monkeypatch.setenv("BATON_BOOTSTRAP", "env:2")
    assert stack_settings({}, other.data_dir).bootstrap == "127.0.0.1:29092"
    # BATON_BOOTSTRAP wins over BATON_DATA_DIR and ./.baton
    monkeypatch.setenv("BATON_DATA_DIR", str(other.data_dir))
    settings = stack_settings({})
    assert settings.bootstrap == "env:2" and settings.topic_prefix == ""  # no record used
    monkeypatch.delenv("BATON_BOOTSTRAP")
    assert stack_settings({}).bootstrap == "127.0.0.1:29092"
    monkeypatch.delenv("BATON_DATA_DIR")
    assert stack_settings({}).bootstrap == "127.0.0.1:19092"
    # a variable of a companion setting wins over the record's
    monkeypatch.setenv("BATON_TOPIC_PREFIX", "mine.")
    assert stack_settings({}).topic_prefix == "mine."


def test_no_stack_is_an_error_naming_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(StackNotFound) as kafka:
        stack_settings({})
    text = str(kafka.value)
    assert str(tmp_path / ".baton" / STACK_FILE) in text
    assert "--data-dir" in text and "--bootstrap" in text and "BATON_BOOTSTRAP" in text
    with pytest.raises(StackNotFound) as audit:
        audit_settings(None, None)
    text = str(audit.value)
    assert str(tmp_path / ".baton" / "chdb") in text and "--dsn" in text
    with pytest.raises(StackNotFound, match=str(tmp_path / "nowhere" / STACK_FILE)):
        stack_settings({}, tmp_path / "nowhere")


def test_a_stale_record_is_refused_for_kafka_and_named_for_the_audit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    record = _record(Path(".baton"), _dead_pid())
    with pytest.raises(BrokerUnavailable) as stale:
        stack_settings({})
    assert "is stale" in str(stale.value) and f"pid {record.pid}" in str(stale.value)
    settings = audit_settings(None, None)
    assert settings.clickhouse_dsn == record.clickhouse_dsn  # the audit is still on disk
    assert "is stale" in capsys.readouterr().err
    mark_stopped(record)
    with pytest.raises(BrokerUnavailable, match="stopped at"):
        stack_settings({})
    assert audit_settings(None, None).clickhouse_dsn == record.clickhouse_dsn


def test_the_audit_of_a_stack_without_sql_or_audit_is_a_clear_error(baton_up: Holder) -> None:
    _record(Path(".baton"), baton_up, sql_url=None)
    with pytest.raises(AuditUnavailable, match="serves no SQL"):
        audit_settings(None, None)
    _record(Path(".baton"), baton_up, clickhouse_dsn=None)
    with pytest.raises(AuditUnavailable, match="without its audit"):
        audit_settings(None, None)
    # an explicit DSN needs no stack
    assert audit_settings("chdb:///x", None).clickhouse_dsn == "chdb:///x"


def test_a_data_dir_without_a_record_but_with_an_audit_is_queried() -> None:
    (Path(".baton") / "chdb").mkdir(parents=True)
    dsn = audit_settings(None, None).clickhouse_dsn
    assert dsn == f"chdb://{Path('.baton').resolve() / 'chdb'}"


def test_a_second_baton_up_on_a_running_data_dir_is_refused(
    tmp_path: Path, baton_up: Holder
) -> None:
    _record(tmp_path, baton_up)
    with pytest.raises(ConfigError, match=f"another `baton up` runs .* pid {baton_up.pid}"):
        refuse_running_stack(tmp_path)
    baton_up.proc.kill()  # its lock goes with it
    baton_up.proc.wait()
    stale = _record(tmp_path, _dead_pid())
    try:
        assert refuse_running_stack(tmp_path) == stale
        assert stale_lock_is_ours(tmp_path)
    finally:
        release_locks()


def test_port_or_off() -> None:
    port = PortOrOff()
    assert port.convert("0", None, None) == 0
    assert port.convert("8123", None, None) == 8123
    assert port.convert("OFF", None, None) is None
    for bad in ("65536", "-1", "x", "1" * 60, "٣"):
        with pytest.raises(click.BadParameter, match="expected a port 0-65535"):
            port.convert(bad, None, None)


def test_setting_options_take_click_types_from_the_model() -> None:
    assert isinstance(click_type("partitions"), click.IntRange)
    assert click_type("partitions").min == 1
    session = click_type("session_timeout_s")  # ge=1: 0.0001 s was a 0 ms session timeout
    assert isinstance(session, click.FloatRange) and session.min == 1 and not session.min_open
    connect = click_type("connect_timeout_s")
    assert isinstance(connect, click.FloatRange) and connect.min == 0 and connect.min_open
    assert isinstance(click_type("security_protocol"), click.Choice)
    assert "SASL_SSL" in click_type("security_protocol").choices
    assert isinstance(click_type("sasl_mechanism"), click.Choice)  # Optional[Literal]
    assert click_type("clickhouse_verify") is click.BOOL
    assert isinstance(click_type("ssl_cafile"), click.Path)
    assert click_type("sasl_password") is click.STRING


def test_a_link_at_the_temp_name_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / f".{STACK_FILE}.{os.getpid()}.tmp").symlink_to(target)
    with pytest.raises(ConfigError, match="cannot write the stack record"):
        _record(tmp_path, 1)
    assert target.read_text() == "keep"


@pytest.mark.parametrize("group", ["", "x" * 250, "bad\x1bgroup", "grüppe"])
def test_a_bad_alerts_group_is_refused_before_connecting(group: str) -> None:
    from click.testing import CliRunner

    from baton.cli import main

    main._register()
    result = CliRunner().invoke(main.cli, ["alerts", "--group", group])
    assert result.exit_code == 2
    assert "--group: expected 1-249 printable ASCII characters" in result.output


def test_a_record_cannot_send_the_audit_queries_elsewhere(baton_up: Holder) -> None:
    record = _record(Path(".baton"), baton_up, clickhouse_dsn="http://evil.example:8123")
    assert audit_settings(None, None).clickhouse_dsn == f"chdb://{record.data_dir / 'chdb'}"


def test_alerts_check_takes_the_data_dir_given_to_alerts(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from baton.cli import main

    main._register()
    nowhere = tmp_path / "nowhere"
    result = CliRunner().invoke(main.cli, ["alerts", "--data-dir", str(nowhere), "check"])
    assert result.exit_code == 2
    assert str(nowhere / STACK_FILE) in result.output and "(from --data-dir)" in result.output


def test_a_variable_in_another_case_still_wins(
    baton_up: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _record(Path(".baton"), baton_up)
    monkeypatch.setenv("baton_bootstrap", "lower:3")  # the settings model reads it too
    assert stack_settings({}).bootstrap == "lower:3"


def _baton_up(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "baton.cli.main", "up", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("BATON_")},
    )


def test_up_refuses_a_taken_sql_port_before_starting_anything(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _baton_up("--data-dir", str(tmp_path / "d"), "--sql-port", str(port))
    assert result.returncode == 2, result.stderr
    assert f"cannot serve SQL on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "--sql-port 0" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d" / "logs").exists()  # no broker was started


def test_up_names_a_data_dir_that_is_a_file_and_a_garbled_record_plainly(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    result = _baton_up("--data-dir", str(afile))
    assert result.returncode == 2
    assert f"the data dir {afile} is a file, not a directory" in result.stderr
    (tmp_path / STACK_FILE).write_text("{not json")
    with pytest.raises(ConfigError) as bad:
        read_record(tmp_path)
    assert "record (Invalid JSON" in str(bad.value)  # no empty field name before it


def test_small_files_are_checked_on_the_open_file_not_before_it(tmp_path) -> None:
    # a FIFO opens without blocking and is refused by fstat; a directory, a big file too
    from baton.schemas.files import FileProblem, read_small_file

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FileProblem, match=r"is not a regular file \(a FIFO\)"):
        read_small_file(fifo, 100)
    with pytest.raises(FileProblem, match="is a directory"):
        read_small_file(tmp_path, 100)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(FileProblem, match="is larger than 100 bytes"):
        read_small_file(big, 100)
    assert read_small_file(big, 101) == b"x" * 101
    with pytest.raises(FileNotFoundError):
        read_small_file(tmp_path / "none", 100)


def test_a_variable_that_beats_baton_data_dir_is_said(
    tmp_path: Path, baton_up: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leftover BATON_BOOTSTRAP beat the stack BATON_DATA_DIR names without a word (a kill
    switch would go to the other cluster; session 29, H3)."""
    other = _record(tmp_path / "other", baton_up, bootstrap="127.0.0.1:29092")
    said: list[str] = []
    monkeypatch.setenv("BATON_DATA_DIR", str(other.data_dir))
    monkeypatch.setenv("BATON_BOOTSTRAP", "env:2")
    assert stack_settings({}, say=said.append).bootstrap == "env:2"
    assert len(said) == 1 and said[0].startswith("warning: BATON_BOOTSTRAP is set: it is used")
    said.clear()
    stack_settings({}, other.data_dir, say=said.append)  # --data-dir: the stack's, nothing said
    stack_settings({"bootstrap": "k:1"}, say=said.append)  # a flag: what was asked for
    assert said == []


def test_a_stacks_decision_key_is_taken_with_its_kafka_or_its_data_dir(
    tmp_path: Path, baton_up: Holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from baton.schemas.signing import new_private_key, public_key_text

    key = public_key_text(new_private_key())
    other = _record(tmp_path / "other", baton_up, decision_keys=key)
    assert stack_settings({}, other.data_dir).decision_keys == key
    # --data-dir and --bootstrap both given: the stack's workers still sign what answers
    # (dropped, `baton kill --data-dir S --bootstrap ...` took a forged record: session 43 F4)
    assert stack_settings({"bootstrap": "127.0.0.1:1"}, other.data_dir).decision_keys == key
    # keys given win; a Kafka of the variables, no stack named: the stack is not used
    mine = public_key_text(new_private_key())
    assert stack_settings({"decision_keys": mine}, other.data_dir).decision_keys == mine
    monkeypatch.setenv("BATON_DECISION_KEYS", mine)
    assert stack_settings({}, other.data_dir).decision_keys == mine
    monkeypatch.delenv("BATON_DECISION_KEYS")
    monkeypatch.setenv("BATON_BOOTSTRAP", "env:2")
    assert stack_settings({}).decision_keys == ""
