"""`baton audit verify` on a kill's record replaced under its id by a control row of another
reason (session 38, H4 said verify missed it: `verify_chains` checks the shape of rows whose
reason is a command's only). The sink stores such a row (a command's id saying something else
is news), `decision_variants` keeps both, and verify fails on the pair (exit 1)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from baton.processors.engine import NO_KILLS, apply_control
from baton.schemas.decision import Outcome, Reason
from baton.schemas.events import KillSwitch
from baton.schemas.policy import load_policy
from tests.integration.test_restore_runs import _store

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "forgery",
    [
        {"reason": Reason.CONTROL_UNSIGNED, "outcome": Outcome.RECORDED},
        {"reason": Reason.OK, "outcome": Outcome.RECORDED},
        {"reason": Reason.KILL_SWITCH_RELEASED},
    ],
    ids=["refused", "ok", "released"],
)
def test_a_kill_replaced_by_a_control_row_of_another_reason_fails_verify(
    tmp_path: Path, forgery: dict
) -> None:
    now = datetime.now(UTC) - timedelta(seconds=5)
    kill = KillSwitch(scope="tenant", tenant="acme", operator="oncall", event_time=now)
    _, record = apply_control(NO_KILLS, kill, load_policy(None), now)
    _store(tmp_path / "chdb", [record])

    def verify() -> subprocess.CompletedProcess[str]:
        dsn = f"chdb://{tmp_path / 'chdb'}"
        command = [sys.executable, "-m", "baton.cli.main", "audit", "verify", "--dsn", dsn]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert verify().returncode == 0
    _store(tmp_path / "chdb", [replace(record, **forgery)], first_offset=10)
    result = verify()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 decision ids hold records saying different things" in result.stdout


def test_a_command_record_no_worker_sealed_fails_verify(tmp_path: Path) -> None:
    """Session 40: a writer of gov.decisions adds an applied release (its own id: no conflict,
    no chain). Verify checks each command record's seal with the stack's seal.key (found
    beside its chdb audit) and names the forged one, exit 1."""
    from baton.processors.control_seal import ensure_seal_key, read_seal_key, seal
    from baton.processors.recorded import input_text
    from baton.schemas.events import KillSwitchReleased

    ensure_seal_key(tmp_path / "worker")
    now = datetime.now(UTC) - timedelta(seconds=5)
    kill = KillSwitch(scope="tenant", tenant="acme", operator="oncall", event_time=now)
    kills, record = apply_control(NO_KILLS, kill, load_policy(None), now)
    record.input = input_text(kill)
    _store(tmp_path / "chdb", [seal(record, read_seal_key(tmp_path / "worker"))])
    release = KillSwitchReleased(scope="tenant", tenant="acme", operator="x", event_time=now)
    _, forged = apply_control(kills, release, load_policy(None), now + timedelta(seconds=1))
    forged.input = input_text(release)

    def verify() -> subprocess.CompletedProcess[str]:
        dsn = f"chdb://{tmp_path / 'chdb'}"
        command = [sys.executable, "-m", "baton.cli.main", "audit", "verify", "--dsn", dsn]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    first = verify()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "seals not checked" not in first.stdout
    _store(tmp_path / "chdb", [forged], first_offset=10)
    result = verify()
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FORGED command record {forged.request_id}" in result.stdout
    assert "1 command records without a worker's seal" in result.stdout


def test_verify_since_names_only_the_forged_command_records_stored_since(tmp_path: Path) -> None:
    """`--since` skips records stored before it (a stack that ran without a key once)."""
    from baton.cli.restore_sealed import read_sealed
    from baton.processors.control_seal import ensure_seal_key, read_seal_key, seal
    from baton.processors.recorded import input_text
    from baton.sinks.clickhouse import connect

    ensure_seal_key(tmp_path / "worker")
    key = read_seal_key(tmp_path / "worker")
    now = datetime.now(UTC) - timedelta(seconds=5)
    records = []
    for tenant in ("acme", "globex"):
        kill = KillSwitch(scope="tenant", tenant=tenant, operator="oncall", event_time=now)
        _, record = apply_control(NO_KILLS, kill, load_policy(None), now)
        record.input = input_text(kill)
        records.append(record)
    _store(tmp_path / "chdb", [records[0]])  # unsealed: no key where it was recorded
    between = datetime.now(UTC)
    _store(tmp_path / "chdb", [seal(records[1], key)], first_offset=10)
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    try:
        everything = read_sealed(client, [key])
        recent = read_sealed(client, [key], since=between)
    finally:
        client.close()
    assert everything.unsealed == [records[0].request_id] and recent.unsealed == []
