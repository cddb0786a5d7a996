"""Session 13 (H5): session 12's ``hold_reopened`` (a run stopped last by a kill stays stopped
over a `baton up` restart unless a signed release came after the stop) against a writer of
the audit who deletes the kill's row *and* adds a release row after the stop.

``hold_reopened`` counted a release as signed when its ``signature`` field was set at all: a
forged release row with a signature no operator made ("AAAA", or a key not in ``operators``)
dated after the stop reopened the run, in silence, though the fresh workers refuse that
release (``fold_reissued`` does). A release counts now only if the folded commands applied it.
An operator's real release after the stop still reopens the run.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from baton.schemas.policy import parse_policy
from tests.unit.test_attacks_session11_control import restored_offline

pytestmark = pytest.mark.unit


def _restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release: str) -> tuple:
    """kill(t1), release(t2), kill(t3) on run ``rk`` (signed by the operator), its handoff
    after t3 stopped ``killed``, kill(t3)'s row deleted; then a release row of ``release``
    ("garbage", "stranger", "tenant-garbage": forged; "operator": the operator's) at t4."""
    from baton.processors.batch import BatchProcessor, InputRecord
    from baton.processors.engine import NO_KILLS, apply_control
    from baton.processors.recorded import input_text, policy_in_force
    from baton.schemas.events import KillSwitch, KillSwitchReleased
    from baton.schemas.signing import control_payload, new_private_key, public_key_text, sign
    from baton.streams.partitioner import partition_for
    from tests.chdb_audit import chdb_audit
    from tests.unit.test_engine_support import handoff

    key, stranger = new_private_key(), new_private_key()
    text = f'operators:\n  oncall: "{public_key_text(key)}"\n'
    (tmp_path / "policy.yaml").write_text(text)
    policy = parse_policy(text, "p")
    trusting = parse_policy("multi_agent: {}\n", "p")  # applies any command: a forger's record
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    kills = NO_KILLS
    proc = BatchProcessor(policy, 4, {}, worker="w", kills=lambda: kills)
    part = partition_for(b"rk", 4)
    recorded: list[Any] = [policy_in_force(policy, t0, "w")]

    def command(kind: type, at: datetime, how: str = "operator", scope: str = "run") -> None:
        nonlocal kills
        event_type = "kill_switch" if kind is KillSwitch else "kill_switch_released"
        target = {"run": "rk", "tenant": "default"}[scope]
        payload = control_payload(event_type, scope, target, "oncall", "", at)
        signature = {
            "operator": lambda: sign(key, payload),
            "stranger": lambda: sign(stranger, payload),
            "garbage": lambda: base64.b64encode(b"\0" * 64).decode(),
        }[how]()
        where = {"run_id": "rk"} if scope == "run" else {"tenant": "default"}
        event = kind(scope=scope, operator="oncall", signature=signature, event_time=at, **where)
        kills, record = apply_control(kills, event, policy if how == "operator" else trusting, at)
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
    command(KillSwitch, t0 + timedelta(seconds=40))
    assert ask(2, t0 + timedelta(seconds=50)) == "killed"
    recorded.pop(-2)  # the writer of the audit deletes kill(t3)'s row
    how, _, scope = release.partition("-")
    command(KillSwitchReleased, t0 + timedelta(seconds=60), how, {"": "run"}.get(scope, scope))
    chdb_audit(tmp_path / "chdb", recorded).close()

    written, said = restored_offline(tmp_path, monkeypatch, t0 + timedelta(minutes=5))
    (state,) = [s for s in written if s.run_id == "rk"]
    return state, said


@pytest.mark.parametrize("release", ["garbage", "stranger", "garbage-tenant", "stranger-tenant"])
def test_a_forged_release_after_the_stop_does_not_reopen_a_run_whose_kill_row_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release: str
) -> None:
    state, said = _restored(tmp_path, monkeypatch, release)
    assert state.stopped == "audit_unverified", said
    assert any("rk" in line and "WARNING" in line for line in said), said


@pytest.mark.parametrize("release", ["operator", "operator-tenant"])
def test_the_operators_release_after_the_stop_still_reopens_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release: str
) -> None:
    state, said = _restored(tmp_path, monkeypatch, release)
    assert state.stopped is None, said
