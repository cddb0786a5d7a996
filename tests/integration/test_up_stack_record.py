"""Commands find the `baton up` of their folder: a real `baton up` in a temp folder (default
data dir, --sql-port 0), then `kill`, `sql`, `trace`, `alerts check` and `alerts` with no
connection flags; an explicit flag wins; a second `up` there is refused; after a clean stop
the record says stopped; a restart says loudly what it forgets, and --sql-port off."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from baton.streams.net import free_port
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


#: where the stacks of this module keep their audits' marks (cli/audit_mark.py)
_STATE = tempfile.mkdtemp(prefix="baton-state-")
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without any BATON_* setting (a user's fresh shell)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return env | {"XDG_STATE_HOME": _STATE} | extra


def _baton(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "baton.cli", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


#: Tansu joins a consumer group in about session.timeout / 2
_FAST = ("--session-timeout-s", "6")


class _Up:
    """`baton up` started in ``folder`` as a user types it (no --data-dir)."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.folder = folder
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "up", *("--partitions", "2"), *_FAST, *extra],
            cwd=folder,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _read(stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append(line.rstrip())

    def ready_line(self) -> str:
        return wait_for(
            lambda: next((ln for ln in self.out if " ready " in ln), None),
            120,
            message=lambda: "ready line:\n" + "\n".join(self.err[-20:]),
        )

    def record(self) -> dict:
        return json.loads((self.folder / ".baton" / "stack.json").read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("project")


@pytest.fixture(scope="module")
def up(folder: Path) -> Iterator[_Up]:
    stack = _Up(folder, "--sql-port", "0")
    try:
        yield stack
    finally:
        stack.stop()


def _request(bootstrap: str, run: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    event = {
        "type": "handoff_requested",
        "request_id": f"{run}-r1",
        "run_id": run,
        "task_id": "t1",
        "from_agent": "planner",
        "to_agent": "researcher",
        "event_time": "2026-11-29T10:00:00Z",
    }
    producer.produce("gov.handoff.requests", json.dumps(event).encode(), run.encode())
    assert producer.flush(10) == 0


def test_the_ready_line_and_the_record_name_the_stack(up: _Up) -> None:
    line = up.ready_line()
    bootstrap = line.split("bootstrap=")[1].split()[0]
    sql = line.split(" sql=")[1].split()[0]
    port = int(sql.rsplit(":", 1)[1])
    assert port != 0  # --sql-port 0: the port the sink picked
    record = wait_for(lambda: up.record()["state"] == "running" and up.record(), 10)
    assert record["bootstrap"] == bootstrap
    assert record["sql_url"] == f"http://127.0.0.1:{port}"  # no token in the record
    assert record["pid"] == up.proc.pid
    assert set(record["pids"]) == {"broker", "worker", "sink", "alerts"}
    assert record["clickhouse_dsn"] == f"chdb://{(up.folder / '.baton' / 'chdb').resolve()}"
    assert any("keeps everything in memory" in ln for ln in up.err), up.err
    assert any(f"stack recorded in {up.folder / '.baton' / 'stack.json'}" in ln for ln in up.err)


def test_commands_in_its_folder_reach_it_without_flags(up: _Up, tmp_path: Path) -> None:
    up.ready_line()
    run = f"run_{uuid.uuid4().hex[:8]}"
    # `baton alerts` next to `baton up`: its own consumer group, so it sees the stop too
    alerts = subprocess.Popen(
        [sys.executable, "-m", "baton.cli", "alerts", "--max-age", "0"],
        cwd=up.folder,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        killed = _baton("kill", "--run", run, "--reason", "runaway", cwd=up.folder)
        assert killed.returncode == 0, killed.stderr
        assert f"kill switch engaged: scope=run target={run} (applied by worker" in killed.stdout
        _request(up.record()["bootstrap"], run)
        # the alerter of `baton up` prints the stop on up's own stdout
        alert = f"🛑 Multi-Agent run {run} stopped: killed"
        wait_for(lambda: any(alert in ln for ln in up.out), 30, message="up's alert line")
        assert alert in (up.folder / ".baton" / "logs" / "alerts.log").read_text()
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(alerts.stdout or []), daemon=True).start()
        wait_for(lambda: any(alert in ln for ln in lines), 30, message="baton alerts' line")
    finally:
        alerts.send_signal(signal.SIGTERM)
        alerts.wait(20)

    query = f"SELECT reason FROM governance.decisions FINAL WHERE run_id = '{run}' ORDER BY reason"

    def audited() -> str | None:
        out = _baton("sql", "-f", "csv", query, cwd=up.folder)
        return out.stdout if "killed" in out.stdout else None

    assert (
        wait_for(audited, 30, interval=0.5, message="the audit") == "reason\nkill_switch\nkilled\n"
    )
    trace = _baton("trace", run, cwd=up.folder)
    assert trace.returncode == 0 and "killed" in trace.stdout, trace.stderr
    rules = _baton("alerts", "check", cwd=up.folder)
    assert rules.returncode in (0, 1) and "ERROR" not in rules.stdout, rules.stderr
    # from another folder: --data-dir, or BATON_DATA_DIR
    data_dir = str(up.folder / ".baton")
    by_flag = _baton("sql", "-f", "csv", query, "--data-dir", data_dir, cwd=tmp_path)
    assert by_flag.stdout == "reason\nkill_switch\nkilled\n", by_flag.stderr
    by_env = _baton("trace", run, cwd=tmp_path, BATON_DATA_DIR=data_dir)
    assert "killed" in by_env.stdout, by_env.stderr


def test_an_explicit_bootstrap_wins_over_the_record(up: _Up) -> None:
    up.ready_line()
    dead = f"127.0.0.1:{free_port()}"
    for how in ({"args": ("--bootstrap", dead)}, {"env": {"BATON_BOOTSTRAP": dead}}):
        args = ("kill", "--run", "x", *how.get("args", ()))
        out = _baton(*args, cwd=up.folder, **how.get("env", {}))
        assert out.returncode == 4 and f"cannot reach Kafka at {dead}" in out.stderr, out.stderr


def test_without_a_stack_the_error_names_what_was_looked_for(tmp_path: Path) -> None:
    for args in (("kill", "--run", "x"), ("sql", "SELECT 1"), ("trace", "run_1")):
        out = _baton(*args, cwd=tmp_path, timeout=30)
        assert out.returncode == 2, out.stderr
        assert str(tmp_path / ".baton" / "stack.json") in out.stderr
        assert "--data-dir" in out.stderr and "Traceback" not in out.stderr


def test_a_second_up_on_the_same_data_dir_is_refused(up: _Up) -> None:
    up.ready_line()
    second = _baton("up", cwd=up.folder, timeout=30)
    assert second.returncode == 2, second.stderr
    assert f"another `baton up` runs with the data dir {up.folder / '.baton'}" in second.stderr
    assert f"pid {up.proc.pid}" in second.stderr


def test_after_a_clean_stop_the_record_says_stopped_and_a_restart_warns(up: _Up) -> None:
    up.ready_line()
    kill = _baton("kill", "--tenant", "acme_h1", "--reason", "before restart", cwd=up.folder)
    assert kill.returncode == 0, kill.stderr
    # the worker's warning about it reaches up's terminal too, not only its log (session 34)
    wait_for(
        lambda: any(
            "baton up: worker: " in ln and "kill_switch tenant acme_h1" in ln for ln in up.err
        ),
        30,
        message=lambda: "the worker's kill switch line on up's stderr:\n" + "\n".join(up.err[-20:]),
    )
    # the audit must hold the kill before the stack stops (the sink stores within ~1 s)
    held = "SELECT count() FROM governance.decisions WHERE reason = 'kill_switch'"
    wait_for(
        lambda: _baton("sql", "-f", "csv", held, cwd=up.folder).stdout.split()[-1] != "0",
        30,
        interval=0.5,
        message="the kill in the audit",
    )
    assert up.stop() == 0
    record = up.record()
    assert record["state"] == "stopped" and record["stopped_at"]
    for name in ("worker", "sink", "alerts"):  # no terminal escapes in the children's logs
        text = Path(record["logs"][name]).read_text(errors="replace")
        assert text and "\x1b" not in text, (name, text[:300])
    killed = _baton("kill", "--run", "x", cwd=up.folder, timeout=30)
    assert killed.returncode == 4 and "stopped at" in killed.stderr, killed.stderr
    # the audit outlives the stack: read straight from its directory
    audit = _baton(
        "sql", "-f", "csv", "SELECT count() > 0 c FROM governance.decisions", cwd=up.folder
    )
    assert audit.stdout == "c\ntrue\n" or audit.stdout == "c\n1\n", audit.stderr
    # a restart in the same folder says what it forgets; --sql-port off serves no SQL
    again = _Up(up.folder, "--sql-port", "off")
    try:
        line = again.ready_line()
        assert " sql=" not in line
        # the runs come back from the audit (the replay work), or it says loudly they do not
        said = [ln for ln in again.err if "restored" in ln or "NOT restored" in ln]
        assert said and ("WARNING" in said[0] or " runs' state from the audit" in said[0]), said
        # the kill switch the old broker held is issued again from its recorded command (one
        # the audit holds no command of would be named as lost): never lifted in silence
        reissued = [ln for ln in again.err if "restore: re-issued" in ln]
        lost = [ln for ln in again.err if "kill switch(es) in force before this restart" in ln]
        assert reissued and not lost, "\n".join(again.err)
        assert again.record()["sql_url"] is None
        query = _baton("sql", "SELECT 1", cwd=up.folder)
        assert query.returncode == 5 and "serves no SQL (--sql-port off)" in query.stderr
    finally:
        assert again.stop() == 0


def test_a_restart_whose_audit_was_moved_away_refuses_until_it_is_back_or_forgotten(
    up: _Up,
) -> None:
    """H2, session 33: the audit moved away (a disk cleanup, a bad restore), `baton up`
    started as a new stack: killed tenants allowed, the seed policy with no operators."""
    up.stop()
    data_dir = up.folder / ".baton"
    before = up.record()
    assert before["audit_id"] and before["audit_made"]
    assert (data_dir / "chdb" / "baton-audit.id").is_file()
    (data_dir / "chdb").rename(data_dir / "chdb.lost")
    try:
        refused = _baton("up", "--sql-port", "off", cwd=up.folder, timeout=60)
        assert refused.returncode == 2, refused.stderr
        assert f"the audit of the earlier stack in {data_dir} is not there" in refused.stderr
        assert "--forget-audit" in refused.stderr and "kill switches" in refused.stderr
        assert up.record() == before  # nothing started, nothing recorded over it
        doctor = _baton("doctor", "--format", "json", "--timeout", "2", cwd=up.folder)
        lines = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert lines["audit of the stack"]["status"] == "fail", lines
        assert "refuses to start" in lines["audit of the stack"]["detail"]
        # with --forget-audit it starts, says what is forgotten, and names a new audit
        forgot = _Up(up.folder, "--sql-port", "off", "--forget-audit")
        try:
            forgot.ready_line()
            assert any("WARNING: --forget-audit" in ln for ln in forgot.err), forgot.err
            assert forgot.record()["audit_id"] not in (None, before["audit_id"])
            # `baton down` stops it as Ctrl-C does (H2, session 33: there was no such command)
            down = _baton("down", cwd=up.folder, timeout=90)
            assert down.returncode == 0, down.stdout + down.stderr
            assert f"stopping baton up pid {forgot.proc.pid}" in down.stdout
            assert "baton down: stopped in " in down.stdout, down.stdout
            assert forgot.proc.wait(10) == 0 and forgot.record()["state"] == "stopped"
            again = _baton("down", cwd=up.folder)
            assert again.returncode == 0 and "nothing to stop" in again.stdout
        finally:
            assert forgot.stop() == 0
    finally:
        if (data_dir / "chdb.lost").exists():
            (data_dir / "chdb.lost").rename(data_dir / "chdb.old")


def _empty_in_place(chdb: Path) -> int:
    """Delete the decisions table's data parts, its metadata kept (what a careless cleanup or
    a tampered disk leaves); how many parts."""
    ddl = (chdb / "metadata" / "governance" / "decisions.sql").read_text()
    uuid_ = re.search(r"UUID '([0-9a-f-]{36})'", ddl).group(1)  # type: ignore[union-attr]
    parts = [p for p in (chdb / "store" / uuid_[:3] / uuid_).iterdir() if p.is_dir()]
    parts = [p for p in parts if p.name != "detached"]
    for part in parts:
        shutil.rmtree(part)
    return len(parts)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0


def test_an_older_copy_of_the_audit_or_one_emptied_in_place_is_refused(up: _Up) -> None:
    """Session 34 (remaining): an older backup of the same audit, or the audit's rows deleted
    with its tables kept, has the audit's id and tables, and the restart took it: fewer runs
    restored, the kill switches issued after the backup lifted. A clean stop marks the
    audit (its decisions by day, its commands) in stack.json and, by its id, outside the
    data dir; a start whose audit holds less refuses: also a whole data dir restored (its
    stack.json older too) and a start after one that crashed (H1, session 35)."""
    data_dir = up.folder / ".baton"
    chdb = data_dir / "chdb"
    first = up.record()  # the --forget-audit stack above, stopped by `baton down`
    assert first["state"] == "stopped" and first["audit_mark"]["rows"]
    assert first["audit_mark"]["ttl_days"] == 365
    assert (Path(_STATE) / "baton" / "audits" / f"{first['audit_id']}.json").is_file()
    shutil.copytree(data_dir, up.folder / "baton.full", symlinks=True)  # as `cp -a` copies
    stack = _Up(up.folder, "--sql-port", "0")
    try:
        stack.ready_line()
        run = f"run_{uuid.uuid4().hex[:8]}"
        _request(stack.record()["bootstrap"], run)
        kill = _baton(
            "kill", "--tenant", "acme_late", "--reason", "after the backup", cwd=up.folder
        )
        assert kill.returncode == 0, kill.stderr
        held = (
            "SELECT count() FROM governance.decisions "
            f"WHERE run_id = '{run}' OR reason = 'kill_switch'"
        )
        wait_for(
            lambda: _baton("sql", "-f", "csv", held, cwd=up.folder).stdout.split()[-1] == "2",
            30,
            interval=0.5,
            message="the run and the kill in the audit",
        )
    finally:
        assert stack.stop() == 0
    newer = up.record()
    marks = first["audit_mark"], newer["audit_mark"]
    assert sum(marks[1]["rows"].values()) >= sum(marks[0]["rows"].values()) + 2, newer
    assert len(marks[1]["commands"]) == len(marks[0]["commands"]) + 1
    shutil.copytree(chdb, data_dir / "chdb.newer", symlinks=True)

    def refused(how: str, **env: str) -> str:
        out = _baton("up", "--sql-port", "off", cwd=up.folder, timeout=60, **env)
        assert out.returncode == 2, (how, out.stderr)
        said = out.stderr
        assert f"{chdb} is not the audit its stack left (its mark: " in said, (how, said)
        assert "an older copy of the audit, or rows deleted from it" in said, (how, said)
        assert "--forget-audit" in said and "Traceback" not in said
        return said

    shutil.rmtree(chdb)
    shutil.copytree(up.folder / "baton.full" / "chdb", chdb, symlinks=True)
    said = refused("older copy of chdb")
    assert "fewer decisions stored since " in said
    assert up.record() == newer  # nothing started, nothing recorded over it
    doctor = _baton("doctor", "--format", "json", "--timeout", "2", cwd=up.folder)
    lines = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert lines["audit of the stack"]["status"] == "fail", lines
    assert "fewer decisions" in lines["audit of the stack"]["detail"]
    # the whole data dir restored from the backup: its stack.json is the older one too
    data_dir.rename(up.folder / "baton.newer")
    shutil.copytree(up.folder / "baton.full", data_dir, symlinks=True)
    said = refused("whole data dir")
    assert f"(its mark: {_STATE}/baton/audits/{newer['audit_id']}.json)" in said, said
    shutil.rmtree(data_dir)
    (up.folder / "baton.newer").rename(data_dir)
    # emptied in place
    shutil.rmtree(chdb)
    shutil.copytree(data_dir / "chdb.newer", chdb, symlinks=True)
    assert _empty_in_place(chdb) >= 1
    assert "(0 of " in refused("emptied in place")
    # the newer audit back: it starts (no false refusal); a start that then crashes keeps the
    # mark of the last clean stop in its record, and an older copy after it is refused
    shutil.rmtree(chdb)
    shutil.copytree(data_dir / "chdb.newer", chdb, symlinks=True)
    crashed = _Up(up.folder, "--sql-port", "off")
    crashed.ready_line()
    pids = crashed.record()["pids"]
    assert crashed.record()["audit_mark"] == newer["audit_mark"]  # carried at the start
    crashed.proc.kill()
    crashed.proc.wait()
    wait_for(lambda: all(_gone(pid) for pid in pids.values()), 60, message="its children gone")
    shutil.rmtree(chdb)
    shutil.copytree(up.folder / "baton.full" / "chdb", chdb, symlinks=True)
    elsewhere = str(up.folder / "no-state")  # only the record's mark: none kept outside
    said = refused("after a crash", XDG_STATE_HOME=elsewhere)
    assert f"(its mark: {data_dir / 'stack.json'})" in said, said
