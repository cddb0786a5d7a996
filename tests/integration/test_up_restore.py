"""`baton up` restarted on its data dir: the embedded broker is new and empty, and the runs'
state is rebuilt from the audit before the worker decides. A stopped, over-budget run stays
stopped; a task keeps its owner; a killed run stays killed."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.helpers import wait_for
from tests.integration.test_up import _read, _Up

pytestmark = pytest.mark.integration

POLICY = """\
multi_agent:
  max_handoffs: 8
  shared_max_usd: 30
"""


def _send(bootstrap: str, events: list[dict]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    for event in events:
        producer.produce("gov.handoff.requests", json.dumps(event).encode(), event["run_id"])
    assert producer.flush(10) == 0


def _handoff(run: str, n: int, task: str, to: str) -> dict:
    return {
        "type": "handoff_requested",
        "request_id": f"{run}-h{n}",
        "run_id": run,
        "task_id": task,
        "from_agent": "planner",
        "to_agent": to,
        "estimated_usd": 1.5,
        "event_time": "2026-11-29T10:00:00Z",
    }


def _done(run: str, n: int, task: str, agent: str, cost: float) -> dict:
    return {
        "type": "handoff_completed",
        "request_id": f"{run}-h{n}",
        "run_id": run,
        "task_id": task,
        "agent": agent,
        "cost_usd": cost,
        "event_time": "2026-11-29T10:00:01Z",
    }


def _kill(bootstrap: str, run: str) -> None:
    kill = {
        "type": "kill_switch",
        "scope": "run",
        "run_id": run,
        "operator": "oncall",
        "reason": "runaway",
        "event_time": "2026-11-29T10:00:02Z",
    }
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce("gov.control", json.dumps(kill).encode(), run.encode())
    assert producer.flush(10) == 0


def _lose_a_tenant_kill(data_dir: Path, tenant: str) -> None:
    """Write a kill of ``tenant`` into the stopped stack's audit, sealed with the stack's key,
    whose command this Baton cannot read (another version's): the restart cannot issue it
    again. (An unsealed kill row written after the seals began is a forger's: it holds
    nothing.)"""
    from baton.processors.control_seal import read_seal_key, seal
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.schemas.events import KillSwitch
    from baton.schemas.policy import load_policy
    from tests.integration.test_restore_runs import _store

    now = datetime.now(UTC)
    kill = KillSwitch(scope="tenant", tenant=tenant, operator="oncall", event_time=now)
    _, record = apply_control(NO_KILLS, kill, load_policy(None), now)
    record.input = json.dumps({"type": "kill_switch", "scope": "tenant", "version": 99})
    _store(data_dir / "chdb", [seal(record, read_seal_key(data_dir / "worker"))], 10**6)


def _release_tenant(bootstrap: str, tenant: str) -> None:
    release = {
        "type": "kill_switch_released",
        "scope": "tenant",
        "tenant": tenant,
        "operator": "oncall",
        "event_time": datetime.now(UTC).isoformat(),
    }
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce("gov.control", json.dumps(release).encode(), tenant.encode())
    assert producer.flush(10) == 0


def _decisions(bootstrap: str, run: str, n: int) -> list[tuple[str, str]]:
    found = wait_for(
        lambda: len(read := _read(bootstrap, "gov.decisions", run)) >= n and read,
        60,
        message=f"{n} decisions of {run}",
    )
    return [(d["outcome"], d["reason"]) for d in found]


def _stop(up: _Up) -> None:
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(60) == 0, "\n".join(up.lines[-30:])


def _sql(data_dir: Path, query: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "baton.cli", "sql", "-f", "csv", query, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return [line.strip().strip('"') for line in out.stdout.splitlines()][1:]  # no header


def _kill_rows(data_dir: Path) -> list[str]:
    """The kill switch's decided_at in FINAL, then how many rows of it the table holds."""
    where = "FROM governance.decisions {} WHERE run_id = 'killed' AND reason = 'kill_switch'"
    final = _sql(data_dir, f"SELECT toString(decided_at) {where.format('FINAL')}")
    return final + _sql(data_dir, f"SELECT count() {where.format('')}")


def _audited(data_dir: Path, *pairs: tuple[str, str]) -> bool:
    """Whether the audit holds a decision of each (run, reason): one ``baton sql`` for all
    (each is a process that imports chDB)."""
    wanted = " OR ".join(f"(run_id = '{run}' AND reason = '{reason}')" for run, reason in pairs)
    query = f"SELECT DISTINCT concat(run_id, '/', reason) FROM governance.decisions WHERE {wanted}"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "baton.cli",
            "sql",
            "--format",
            "csv",
            query,
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    found = {line.strip().strip('"') for line in out.stdout.splitlines()}
    return all(f"{run}/{reason}" in found for run, reason in pairs)


def _forge_release(data_dir: Path, run: str) -> None:
    """Write an applied release of ``run``'s kill, with its command, into the stopped stack's
    audit, as a writer of gov.decisions can: no worker sealed it."""
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.processors.recorded import input_text
    from baton.schemas.events import KillSwitchReleased
    from baton.schemas.policy import load_policy
    from tests.integration.test_restore_runs import _store

    now = datetime.now(UTC)
    release = KillSwitchReleased(scope="run", run_id=run, operator="oncall", event_time=now)
    _, record = apply_control(NO_KILLS, release, load_policy(None), now)
    record.input = input_text(release)
    _store(data_dir / "chdb", [record], first_offset=2 * 10**6)


def _sealed_kills(
    data_dir: Path, where: str = "reason = 'kill_switch' AND run_id = 'killed'"
) -> list[bool]:
    """Whether each kill record (``where``: each such record) of the control log verifies
    under the key `baton up` made."""
    from baton.processors.control_seal import SEAL_FIELDS, is_sealed, read_seal_key

    key = read_seal_key(data_dir / "worker")
    assert (data_dir / "worker" / "seal.key").stat().st_mode & 0o077 == 0  # the owner's alone

    rows = _sql(
        data_dir,
        f"SELECT toJSONString(tuple({', '.join(SEAL_FIELDS)}, seal)) FROM governance.control_log "
        f"WHERE {where}",
    )
    out = []
    for row in rows:
        *values, said = json.loads(row.replace('""', '"'))
        values[8] = datetime.fromisoformat(values[8])
        out.append(is_sealed(key, values, said))
    return out


def test_a_stopped_over_budget_run_stays_stopped_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker seals the kill's record with the key `baton up` made (no setting), and the
    restart issues again only sealed commands (a release forged into the audit is named)."""
    monkeypatch.delenv("BATON_AUDIT_CHAIN_KEY", raising=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    data_dir = tmp_path / "data"
    first = _Up(data_dir, "--policy", str(policy))
    try:
        bootstrap = first.ready_line().split("bootstrap=")[1].split()[0]
        _send(
            bootstrap,
            [
                _handoff("over", 1, "t1", "researcher"),
                _done("over", 1, "t1", "researcher", 40.0),  # $40 of $30: stopped for good
                _handoff("owned", 1, "t1", "researcher"),  # t1 now belongs to researcher
            ],
        )
        assert _decisions(bootstrap, "over", 2)[1] == ("stop", "shared_budget_exceeded")
        assert _decisions(bootstrap, "owned", 1) == [("allow", "ok")]
        _kill(bootstrap, "killed")
        wait_for(
            lambda: _audited(
                data_dir,
                ("over", "shared_budget_exceeded"),
                ("owned", "ok"),
                ("killed", "kill_switch"),
            ),
            60,
            interval=1,
            message="the audit to hold both runs and the kill switch",
        )
        engaged = _kill_rows(data_dir)
        assert engaged[1:] == ["1"], engaged
        assert _sealed_kills(data_dir) == [True]
        # the worker's record of the policy it decides under too (a restart reads the policy
        # in force from sealed records alone: session 42)
        assert _sealed_kills(data_dir, "reason = 'policy_in_force'") == [True]
    finally:
        _stop(first)

    _lose_a_tenant_kill(data_dir, "acme")
    _forge_release(data_dir, "killed")
    # the file edited after the start: the stack's workers keep the copy its start read
    # (H2, session 34: a restarted worker loaded the edit, and publish compared with it)
    copy = Path(json.loads((data_dir / "stack.json").read_text())["policy"])
    assert copy.parent == data_dir and copy.read_text() == POLICY
    second = _Up(data_dir, "--policy", str(policy))
    try:
        bootstrap = second.ready_line().split("bootstrap=")[1].split()[0]
        # both runs, and the readiness probe's of the first start
        said = "\n".join(second.lines)
        restored = re.search(r"restored (\d+) runs' state from the audit", said)
        assert restored is not None and int(restored[1]) >= 2, said
        _send(
            bootstrap,
            [
                _handoff("over", 2, "t2", "writer"),  # a new handoff of the stopped run
                _handoff("owned", 2, "t1", "writer"),  # t1 to someone else than its owner
                _handoff("killed", 1, "t1", "writer"),  # a run killed before the restart
            ],
        )
        assert _decisions(bootstrap, "over", 1) == [("stop", "shared_budget_exceeded")]
        assert _decisions(bootstrap, "owned", 1) == [("stop", "ownership_conflict")]
        assert ("stop", "killed") in _decisions(bootstrap, "killed", 1)
        # the run kill; the tenant kill whose command does not read is named, not sent
        assert any("re-issued 1 of 2 kill switch" in line for line in second.lines), said
        assert any(
            "1 command record(s) of the audit carry no worker's seal" in line
            and "kill_switch_released:run:killed:" in line
            for line in second.lines
        ), said
        # a tenant kill the restart cannot issue again holds for a run it never saw (it was
        # allowed: session 36), until a release applied after the restart lifts it
        assert any(
            "cannot be issued again" in line and "tenant acme" in line for line in second.lines
        ), said
        _send(bootstrap, [{**_handoff("fresh", 1, "t1", "writer"), "tenant": "acme"}])
        assert _decisions(bootstrap, "fresh", 1) == [("stop", "killed")]
        _release_tenant(bootstrap, "acme")
        released = wait_for(
            lambda: [
                d["reason"]
                for d in _read(bootstrap, "gov.decisions", "*")
                if d["request_id"].startswith("kill_switch_released:tenant:acme:")
            ],
            60,
            message="the release's control record",
        )
        assert released == ["kill_switch_released"], released
        _send(bootstrap, [{**_handoff("fresh", 2, "t2", "writer"), "tenant": "acme"}])
        assert _decisions(bootstrap, "fresh", 2)[1] == ("allow", "ok")
        # the re-issued kill is on the decisions topic before the stop it causes: once the
        # stop is in the audit, the re-issue went through the sink, which kept the first row
        # (it stored the re-issue under the restart's time: the kill read as engaged after
        # the stops it caused; session 29, H2)
        wait_for(
            lambda: _audited(data_dir, ("killed", "killed")),
            60,
            interval=1,
            message="the audit to hold the killed run's stop",
        )
        time.sleep(2)  # the sink stores a batch's control rows after its other rows
        assert _kill_rows(data_dir) == engaged
        assert _sealed_kills(data_dir) == [True]  # the re-issue seals the same: not stored
    finally:
        _stop(second)
