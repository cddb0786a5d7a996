"""Session 12 (H4): a killed run reopened in silence by a `baton up` restart.

A run's switch was engaged, released (signed) and engaged again (kill(t1), release(t2),
kill(t3)), and the run's handoff after t3 was stopped ``killed``. A writer of the audit deletes
kill(t3)'s control row: the restart re-issues kill(t1) and release(t2), whose fold leaves the
switch off; the audit's last record for the switch is the release (nothing "engaged last" to
hold); and the safety net for runs stopped last by a kill (``keep_killed``) let the run go
because a re-issued command *named* it (the old kill and the release), though none holds it.
The run reopened in silence. Now a run stopped last by a kill stays stopped
(``audit_unverified``, named) unless the folded commands hold a switch over it or a signed
release of one came after its stop. The honest history (the run's stop, then the release)
still reopens it. Each test fails before its fix.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from baton.schemas.policy import parse_policy
from tests.unit.test_attacks_session11_control import restored_offline

pytestmark = pytest.mark.unit


def _restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deleted_kill: bool) -> tuple:
    from baton.processors.batch import BatchProcessor, InputRecord
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.processors.recorded import input_text, policy_in_force
    from baton.schemas.events import KillSwitch, KillSwitchReleased
    from baton.schemas.signing import control_payload, new_private_key, public_key_text, sign
    from baton.streams.partitioner import partition_for
    from tests.chdb_audit import chdb_audit
    from tests.unit.test_engine_support import handoff

    key = new_private_key()
    text = f'operators:\n  oncall: "{public_key_text(key)}"\n'
    (tmp_path / "policy.yaml").write_text(text)
    policy = parse_policy(text, "p")
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    kills = NO_KILLS
    proc = BatchProcessor(policy, 4, {}, worker="w", kills=lambda: kills)
    part = partition_for(b"rk", 4)
    recorded: list[Any] = [policy_in_force(policy, t0, "w")]

    def command(kind: type, at: datetime) -> None:
        nonlocal kills
        event_type = "kill_switch" if kind is KillSwitch else "kill_switch_released"
        payload = control_payload(event_type, "run", "rk", "oncall", "", at)
        event = kind(
            scope="run", run_id="rk", operator="oncall", signature=sign(key, payload), event_time=at
        )
        kills, record = apply_control(kills, event, policy, at)
        assert record.reason == event_type, record
        record.input = input_text(event)
        recorded.append(record)

    def ask(n: int, at: datetime) -> str:
        ev = handoff(f"h{n}", f"t{n}", "planner", "researcher", run_id="rk")
        ev = ev.model_copy(update={"event_time": at})
        out = proc.process([InputRecord("gov.handoff.requests", part, n, b"rk", ev.to_json())], at)
        recorded.extend(d for _, d in out.decisions)
        return str(out.decisions[-1][1].reason)

    assert ask(0, t0) == "ok"
    command(KillSwitch, t0 + timedelta(seconds=10))
    assert ask(1, t0 + timedelta(seconds=20)) == "killed"
    command(KillSwitchReleased, t0 + timedelta(seconds=30))
    if deleted_kill:
        command(KillSwitch, t0 + timedelta(seconds=40))
        assert ask(2, t0 + timedelta(seconds=50)) == "killed"
        recorded.pop(-2)  # the writer of the audit deletes kill(t3)'s row
    chdb_audit(tmp_path / "chdb", recorded).close()

    written, said = restored_offline(tmp_path, monkeypatch, t0 + timedelta(minutes=5))
    (state,) = [s for s in written if s.run_id == "rk"]
    return state, said


def test_a_run_killed_after_a_release_stays_stopped_when_its_kill_row_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, said = _restored(tmp_path, monkeypatch, deleted_kill=True)
    assert state.stopped == "audit_unverified", said
    assert any("rk" in line and "WARNING" in line for line in said), said


def test_a_run_whose_kill_was_released_after_its_stop_reopens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, said = _restored(tmp_path, monkeypatch, deleted_kill=False)
    assert state.stopped is None, said
