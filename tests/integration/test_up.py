"""`baton up` as a user runs it: one command, raw JSON from any client, a killed child comes
back, a child that keeps failing ends it with its error, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from baton.streams.net import free_port
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


class _Up:
    def __init__(self, data_dir: Path, *extra: str, sql_port: int | None = None) -> None:
        self.data_dir = data_dir
        self.sql_port = sql_port or free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "baton.cli",
                "up",
                "--data-dir",
                str(data_dir),
                "--sql-port",
                str(self.sql_port),
                "--partitions",
                "4",
                "--session-timeout-s",
                "6",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def ready_line(self) -> str:
        return wait_for(
            lambda: next((ln for ln in self.lines if " ready " in ln), None),
            120,
            message=lambda: "ready line:\n" + "\n".join(self.lines[-30:]),
        )


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):
    u = _Up(tmp_path_factory.mktemp("up"))
    try:
        yield u
    finally:
        if u.proc.poll() is None:
            u.proc.send_signal(signal.SIGTERM)
            try:
                u.proc.wait(40)
            except subprocess.TimeoutExpired:
                u.proc.kill()


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _child_running(parent: int, command: str) -> int | None:
    """The pid of ``parent``'s live child running ``baton <command>``, if there is one."""
    for pid in _children_of(parent):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"baton.cli" in args and command.encode() in args and state != "Z":
            return pid
    return None


def _gone(pids: list[int]) -> bool:
    def alive(pid: int) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        except OSError:
            return False

    return not any(alive(p) for p in pids)


def _read(bootstrap: str, topic: str, run: str, raw: bool = False) -> list[Any]:
    """``run``'s records in ``topic`` now: read from the start to the end of every partition
    (callers poll this until what they wait for is there); ``raw``: their values' bytes."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "log_level": 0,
            "enable.partition.eof": True,
        }
    )
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[dict] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + 10
        while len(at_end) < len(parts) and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                continue
            out.append((json.loads(msg.value()), msg.value()))
    finally:
        c.close()
    return [value if raw else d for d, value in out if d.get("run_id") == run]


def test_typed_json_from_a_default_partitioner_client_is_decided(up: _Up) -> None:
    line = up.ready_line()
    bootstrap = line.split("bootstrap=")[1].split()[0]
    run = f"run_{uuid.uuid4().hex[:6]}"
    # what a user types into kcat: plain JSON lines, default (CRC32) partitioner
    typed = [
        {
            "type": "handoff_requested",
            "request_id": "r1",
            "run_id": run,
            "task_id": "refund_check",
            "from_agent": "planner",
            "to_agent": "billing_agent",
            "event_time": "2026-11-25T10:00:00Z",
        },
        {
            "type": "handoff_requested",
            "request_id": "r2",
            "run_id": run,
            "task_id": "refund_check",
            "from_agent": "planner",
            "to_agent": "researcher",
            "event_time": "2026-11-25T10:00:01Z",
        },
    ]
    producer = Producer({"bootstrap.servers": bootstrap})
    for event in typed:
        producer.produce("gov.handoff.requests", json.dumps(event).encode(), run.encode())
    assert producer.flush(10) == 0

    def read(topic: str) -> list[dict]:
        return _read(bootstrap, topic, run)

    decisions = wait_for(
        lambda: len(got := read("gov.decisions")) >= 2 and got, 60, message="decisions"
    )
    assert [(d["outcome"], d["reason"]) for d in decisions] == [
        ("allow", "ok"),
        ("stop", "ownership_conflict"),
    ]
    stops = wait_for(lambda: read("gov.stops"), 30, message="stop")
    assert stops[0]["reason"] == "ownership_conflict" and stops[0]["owner"] == "billing_agent"

    # the audit answers SQL through the running stack (chDB is held by the sink), with the
    # DSN and token the ready line printed
    dsn = line.split(" sql=")[1].split()[0]
    assert dsn.startswith("http://baton:") and dsn.endswith(f"@127.0.0.1:{up.sql_port}")
    query = (
        f"SELECT reason, count() FROM governance.decisions FINAL WHERE run_id = '{run}' "
        "GROUP BY reason ORDER BY reason"
    )
    sql = [sys.executable, "-m", "baton.cli", "sql", "--format", "csv", query]

    def audited() -> str | None:
        out = subprocess.run([*sql, "--dsn", dsn], capture_output=True, text=True, timeout=30)
        return out.stdout if "ownership_conflict" in out.stdout else None

    text = wait_for(audited, 60, interval=1, message="the audit to hold the run")
    assert "ok" in text and "ownership_conflict" in text
    # without --dsn, `baton sql` finds the endpoint and its token in the data directory
    found = [*sql, "--data-dir", str(up.data_dir)]
    assert subprocess.run(found, capture_output=True, text=True, timeout=30).stdout == text
    # and nobody gets in without the token
    without = subprocess.run(
        [*sql, "--dsn", f"http://127.0.0.1:{up.sql_port}"], capture_output=True, text=True
    )
    assert without.returncode == 5 and "Code: 516" in without.stderr, without.stderr


def _handoff(run: str, request_id: str, task_id: str) -> bytes:
    return json.dumps(
        {
            "type": "handoff_requested", "request_id": request_id, "run_id": run,
            "task_id": task_id, "from_agent": "planner", "to_agent": "researcher",
            "event_time": "2026-11-25T10:00:00Z",
        }
    ).encode()  # fmt: skip


def test_a_killed_worker_is_restarted_and_decides_again(up: _Up) -> None:
    bootstrap = up.ready_line().split("bootstrap=")[1].split()[0]
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    before = f"run_{uuid.uuid4().hex[:6]}"
    producer.produce("gov.handoff.requests", _handoff(before, "r1", "t1"), before.encode())
    assert producer.flush(10) == 0
    wait_for(lambda: _read(bootstrap, "gov.decisions", before), 60, message="the first")
    old = _child_running(up.proc.pid, "worker")
    assert old is not None
    os.kill(old, signal.SIGKILL)
    crash = wait_for(
        lambda: next((ln for ln in up.lines if f"the worker (pid {old}) exited" in ln), None),
        10,
        message=lambda: "the crash line:\n" + "\n".join(up.lines[-10:]),
    )
    assert "with signal SIGKILL" in crash and "restarting it in 1 s" in crash
    new = wait_for(
        lambda: (
            _child_running(up.proc.pid, "worker") not in (None, old)
            and _child_running(up.proc.pid, "worker")
        ),
        10,
        message="a new worker process",
    )
    # its line is read from up's stdout by a thread: it may come a moment after the process
    wait_for(
        lambda: f"baton up: restarted the worker (pid {new})" in up.lines,
        10,
        message=lambda: f"the restart line of pid {new}:\n" + "\n".join(up.lines[-10:]),
    )

    run = f"run_{uuid.uuid4().hex[:6]}"
    producer.produce("gov.handoff.requests", _handoff(run, "r1", "t1"), run.encode())
    assert producer.flush(10) == 0
    # the dead member holds its partitions until its 6 s session times out
    (decision,) = wait_for(
        lambda: _read(bootstrap, "gov.decisions", run), 60, message="the restarted worker"
    )
    assert decision["outcome"] == "allow"
    assert decision["worker"].endswith(f":{new}")  # decided by the new process (host:pid)
    assert up.proc.poll() is None  # the stack itself never stopped
    # the run decided before the kill goes on from its restored state (its record carries the
    # stack's state MAC: the restore took it, and called nothing a forgery)
    producer.produce("gov.handoff.requests", _handoff(before, "r2", "t2"), before.encode())
    assert producer.flush(10) == 0
    second = wait_for(
        lambda: [d for d in _read(bootstrap, "gov.decisions", before) if d["request_id"] == "r2"],
        60,
        message="the run's second handoff",
    )
    assert (second[0]["outcome"], second[0]["handoff_count"]) == ("allow", 2), second
    log = (up.data_dir / "logs" / "worker.log").read_text(errors="replace")
    assert "not the workers' own newest" not in log, log[-3000:]


def test_a_child_that_keeps_failing_ends_up_with_its_error(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # another program takes the SQL port once `baton up` has checked it is free (a port
    # taken before is refused at once): every sink start fails to serve SQL (exit 5)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with socket.socket() as squatter:
        started = time.monotonic()
        failing = _Up(
            tmp_path_factory.mktemp("up-failing"),
            "--restart-limit",
            "3",
            "--restart-backoff-s",
            "0.2",
            sql_port=port,
        )
        try:
            # its broker runs: the port check is behind, the sink not started yet
            wait_for(lambda: _children_of(failing.proc.pid), 30, message="the broker")
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            children = wait_for(
                lambda: len(_children_of(failing.proc.pid)) >= 3 and _children_of(failing.proc.pid),
                30,
                message="the children",
            )
            code = failing.proc.wait(90)
        finally:
            if failing.proc.poll() is None:
                failing.proc.kill()
    took = time.monotonic() - started
    text = "\n".join(failing.lines)
    assert code == 5, text  # AuditUnavailable, the sink's own exit code
    restarts = [ln for ln in failing.lines if "the sink (pid" in ln and "exited with code 5" in ln]
    assert len(restarts) == 2, text
    assert "restarting it in 0.2 s" in restarts[0] and "restarting it in 0.4 s" in restarts[1]
    assert f"cannot serve SQL on 127.0.0.1:{port}" in restarts[0]
    assert "baton: error: the sink keeps failing (3 exits within 120 s" in text
    assert f"cannot serve SQL on 127.0.0.1:{port}" in text.split("keeps failing")[1]
    assert " ready " not in text
    assert "Traceback" not in text.split("baton: error:")[1]
    wait_for(lambda: _gone(children), 20, message="the broker, worker and alerter to exit")
    print(f"a failing sink ended baton up in {took:.1f} s")


def test_the_stack_ends_with_its_broker(tmp_path_factory: pytest.TempPathFactory) -> None:
    stack = _Up(tmp_path_factory.mktemp("up-broker"), "--no-audit")
    try:
        worker = wait_for(lambda: _child_running(stack.proc.pid, "worker"), 30, message="worker")
        tansu = next(
            p
            for p in _children_of(stack.proc.pid)
            if b"tansu" in Path(f"/proc/{p}/cmdline").read_bytes()
        )
        os.kill(tansu, signal.SIGKILL)
        code = stack.proc.wait(30)
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()
    text = "\n".join(stack.lines)
    assert code == 4, text  # BrokerUnavailable
    assert "baton: error: the embedded Kafka broker on 127.0.0.1:" in text
    assert "exited with signal SIGKILL; its topics were in memory and are gone" in text
    assert "restarted the worker" not in text  # the broker's end is not a worker crash
    wait_for(lambda: _gone([worker]), 20, message="the worker to exit")


def test_a_restarted_sink_serves_sql_with_a_new_token_and_says_so(up: _Up) -> None:
    old_dsn = up.ready_line().split(" sql=")[1].split()[0]
    sink = _child_running(up.proc.pid, "sink")
    assert sink is not None
    os.kill(sink, signal.SIGKILL)
    line = wait_for(
        lambda: next((ln for ln in up.lines if "restarted with a new token: sql=" in ln), None),
        60,
        message=lambda: "the new SQL line:\n" + "\n".join(up.lines[-10:]),
    )
    new_dsn = line.split("sql=")[1].split()[0]
    assert new_dsn != old_dsn and new_dsn.endswith(f"@127.0.0.1:{up.sql_port}")

    def answer(dsn: str) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "baton.cli", "sql", "-f", "csv", "--dsn", dsn, "SELECT 42 x"]
        return subprocess.run(args, capture_output=True, text=True, timeout=30)

    fresh = answer(new_dsn)
    assert fresh.stdout == "x\n42\n", fresh.stderr
    stale = answer(old_dsn)
    assert stale.returncode == 5 and "Code: 516" in stale.stderr, stale.stderr
    assert up.proc.poll() is None


def test_the_data_dir_and_what_the_stack_writes_are_its_users_alone(up: _Up) -> None:
    # H2 (session 27): drwxr-xr-x and -rw-r--r--: any local user read the audit's parts,
    # the alerts log and up.out's SQL token
    up.ready_line()
    for folder in (up.data_dir, up.data_dir / "logs", up.data_dir / "chdb"):
        assert folder.stat().st_mode & 0o077 == 0, (folder, oct(folder.stat().st_mode))
    written = [p for p in up.data_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert written and all(p.stat().st_mode & 0o077 == 0 for p in written), [
        (str(p), oct(p.stat().st_mode)) for p in written if p.stat().st_mode & 0o077
    ][:5]


def test_the_stack_signs_its_decisions_and_its_clients_take_only_those(up: _Up) -> None:
    """`baton up` makes worker/decision.key, its workers sign with it, stack.json names its
    public key, and the client commands of the stack (stack_settings) check with it."""
    from baton.cli.stack_record import stack_settings
    from baton.schemas.decision import Outcome
    from baton.schemas.decision_signing import decision_keys, signing_key_of
    from baton.streams.client import GovernanceClient
    from tests.helpers import handoff

    up.ready_line()
    record = json.loads((up.data_dir / "stack.json").read_text())
    key_file = up.data_dir / "worker" / "decision.key"
    assert record["decision_keys"] == signing_key_of(key_file)[1]
    settings = stack_settings({}, up.data_dir)
    assert settings.decision_keys == record["decision_keys"]
    run = f"signed-{uuid.uuid4().hex[:8]}"
    with GovernanceClient(settings=settings, timeout=20) as client:
        d = client.check(handoff(run, 1, "t1"))
        assert (d.outcome, d.reason) == (Outcome.ALLOW, "ok")
        assert client.options.decision_keys and client.channel.unsigned.total == 0
    c = Consumer({"bootstrap.servers": record["bootstrap"], "group.id": "s", "log_level": 0})
    try:
        parts = c.list_topics("gov.decisions", timeout=10).topics["gov.decisions"].partitions
        c.assign([TopicPartition("gov.decisions", p, OFFSET_BEGINNING) for p in parts])
        seen: list = []
        wait_for(
            lambda: (
                seen.extend(m for m in c.consume(200, 0.5) if m.error() is None)
                or any(m.key() == run.encode() for m in seen)
            ),
            20,
            message="the run's decision on gov.decisions",
        )
    finally:
        c.close()
    keys = decision_keys(record["decision_keys"])
    assert all(keys.verifies(m.value()) for m in seen)


def test_the_stack_keys_its_chains_and_its_sink_refuses_rows_forged_onto_a_run(up: _Up) -> None:
    """`baton up` makes worker/chain.key with a fresh audit and its workers link decisions
    with it, and put the audit MAC (their seal.key) on each: a writer of gov.decisions who
    appends an allow at a run's end, linked as the scheme says without the key, or an
    unchained stop (which passed verify, and stopped the run at the next restart: h44), puts
    no row in the audit: the sink refuses both as forged, and `baton audit verify` names them
    (the allow passed verify on a default stack before session 44: h43b F3b)."""
    from baton.schemas.decision import Decision, Outcome, chain_hash, chain_values

    up.ready_line()
    key_file = up.data_dir / "worker" / "chain.key"
    assert key_file.stat().st_mode & 0o077 == 0 and len(key_file.read_text().strip()) == 64
    record = json.loads((up.data_dir / "stack.json").read_text())
    bootstrap = record["bootstrap"]
    run = f"chained-{uuid.uuid4().hex[:8]}"
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})  # as workers
    for i in range(2):
        event = {"type": "handoff_requested", "request_id": f"h{i}", "run_id": run,
                 "task_id": f"t{i}", "from_agent": "planner", "to_agent": "researcher",
                 "event_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        p.produce("gov.handoff.requests", json.dumps(event).encode(), run.encode())
    assert p.flush(10) == 0
    decided = wait_for(
        lambda: len(got := _read(bootstrap, "gov.decisions", run)) >= 2 and got, 60,
        message="decisions",
    )  # fmt: skip
    assert all(len(d["audit_mac"]) == 32 for d in decided), decided

    def verify(*scope: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "BATON_AUDIT_CHAIN_KEY"}
        return subprocess.run(
            [sys.executable, "-m", "baton.cli", "audit", "verify", *scope,
             "--data-dir", str(up.data_dir)],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip

    # the sink stores both: the run verifies with the key found beside the audit
    intact = wait_for(lambda: (v := verify("--run", run)) and "2 chained rows of 2" in v.stdout
                      and v, 60, message=lambda: verify("--run", run).stdout)  # fmt: skip
    assert intact.returncode == 0 and "every chain holds" in intact.stdout, intact.stdout
    assert "no chain key" not in intact.stdout

    # the run's head: the link no decision follows (two of one batch share their time)
    followed = {d["chain_prev"] for d in decided}
    (head,) = [d for d in decided if d["chain_hash"] and d["chain_hash"] not in followed]
    last = Decision.from_json(json.dumps(head))
    last.decision_id = last.request_id = f"forged-{uuid.uuid4().hex[:6]}"
    last.outcome, last.reason, last.to_agent = Outcome.ALLOW, "ok", "mallory"
    last.chain_prev = last.chain_hash
    last.chain_hash = chain_hash(b"", last.chain_prev, chain_values(last))
    stop = Decision.from_json(json.dumps(head))
    stop.decision_id = stop.request_id = f"forged-{uuid.uuid4().hex[:6]}"
    stop.outcome, stop.reason, stop.chain_prev, stop.chain_hash = Outcome.STOP, "killed", None, None
    # a worker's record copied with its MAC, signature cut off: the same decision, stored once
    copy = _read(bootstrap, "gov.decisions", run, raw=True)[0]
    copy = copy[: copy.rindex(b',"signature"')] + b"}"
    for value in (last.to_json(), stop.to_json(), copy):
        p.produce("gov.decisions", value, run.encode())
    assert p.flush(10) == 0
    whole = wait_for(lambda: (v := verify()) and "FORGED decision records: 2 " in v.stdout and v,
                     60, message=lambda: verify().stdout)  # fmt: skip
    assert whole.returncode == 1 and "2 forged decision records refused" in whole.stdout
    query = (
        "SELECT error_kind, count() FROM governance.rejected FINAL "
        f"WHERE position(raw, '{run}') > 0 GROUP BY error_kind"
    )
    rejected = subprocess.run(
        [sys.executable, "-m", "baton.cli", "sql", "--format", "csv", query,
         "--data-dir", str(up.data_dir)], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert rejected.stdout.split()[1:] == ["forged,2"], rejected
    # the run itself holds: neither forged row is in the audit
    held = verify("--run", run)
    assert held.returncode == 0 and "2 chained rows of 2" in held.stdout, held.stdout
    # and `baton replay --from-kafka` uses none of them either, as the sink stores none
    policy = Path(__file__).parents[2] / "policy.example.yaml"
    replayed = subprocess.run(
        [sys.executable, "-m", "baton.cli", "replay", "--policy", str(policy), "--from-kafka",
         "--run", run, "--data-dir", str(up.data_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    said = replayed.stdout + replayed.stderr
    assert said.count("no audit MAC of the workers' key") == 2, said
    assert "all 2 decisions reproduced exactly" in replayed.stdout, said


def test_the_stack_s_alerter_announces_only_its_workers_stops(up: _Up) -> None:
    """`baton up` gives its alerter the stack's public key: a stop forged onto gov.stops is not
    announced (h43b F4), the workers' own is."""
    from baton.schemas.decision import Decision

    up.ready_line()
    bootstrap = json.loads((up.data_dir / "stack.json").read_text())["bootstrap"]
    run = f"alerted-{uuid.uuid4().hex[:8]}"
    p = Producer({"bootstrap.servers": bootstrap})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for i, to in enumerate(("researcher", "writer")):  # the second: ownership_conflict
        event = {
            "type": "handoff_requested",
            "request_id": f"h{i}",
            "run_id": run,
            "task_id": "t",
            "from_agent": "planner",
            "to_agent": to,
            "event_time": now,
        }
        p.produce("gov.handoff.requests", json.dumps(event).encode(), run.encode())  # fmt: skip
    assert p.flush(10) == 0
    (stop,) = wait_for(lambda: _read(bootstrap, "gov.stops", run) or None, 60, message="stop")
    forged = Decision.from_json(json.dumps(stop))
    forged.decision_id, forged.reason = "f" * 32, "forged_page"
    p.produce("gov.stops", forged.to_json(), run.encode())
    assert p.flush(10) == 0
    wait_for(lambda: any(run in ln and "ownership_conflict" in ln for ln in up.lines), 60,
             message=lambda: "\n".join(up.lines[-20:]))  # fmt: skip
    time.sleep(2)  # (the forged one, read after the real one, would be announced by now)
    assert not any("forged_page" in ln for ln in up.lines), [ln for ln in up.lines if run in ln]


def test_sigterm_stops_everything_without_orphans(up: _Up) -> None:
    up.ready_line()
    children = _children_of(up.proc.pid)
    assert len(children) >= 2  # broker + worker (+ sink + alerts)
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(40) == 0
    wait_for(lambda: _gone(children), 20, message="children to exit")


def test_supervision_outlives_its_readers_and_sighup_stops_it_recorded(
    tmp_path: Path,
) -> None:
    """H2 (session 27): `baton up 2>&1 | grep -m1 ready`: once the reader was gone, up's
    next line (a child's restart) raised BrokenPipeError and the whole stack stopped; and a
    closed terminal (SIGHUP) killed it with its record left "running"."""
    data = tmp_path / "stack"
    proc = subprocess.Popen(
        [sys.executable, "-m", "baton.cli", "up", "--data-dir", str(data), "--no-audit",
         "--partitions", "2", "--session-timeout-s", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if " ready " in line or not line:
                break
        assert " ready " in line, line
        proc.stdout.close()  # the reader goes away, as grep -m1 does
        old = _child_running(proc.pid, "worker")
        assert old is not None
        os.kill(old, signal.SIGKILL)
        wait_for(
            lambda: _child_running(proc.pid, "worker") not in (None, old),
            30,
            message="the worker restarted with no one reading up's output",
        )
        assert proc.poll() is None
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(40) == 0
        assert json.loads((data / "stack.json").read_text())["state"] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stop_before_ready_ends_130(tmp_path: Path) -> None:
    # H2 (session 27, F11): once its children were started, a stop before ready ended 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "baton.cli", "up", "--data-dir", str(tmp_path / "s"),
         "--no-audit", "--partitions", "2", "--session-timeout-s", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = ""
        while "waiting for the worker" not in seen:
            line = proc.stdout.readline()
            assert line, seen
            seen += line
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, seen + out
    assert " ready " not in seen + out
