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
