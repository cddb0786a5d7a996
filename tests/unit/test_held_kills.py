"""Kill switches a `baton up` restart could not issue again, held by its workers from their start
(processors/held_kills.py): the file the restore writes, a worker reading it, and what lifts a
held switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from baton.cli import up_restart
from baton.processors.engine import NO_KILLS, apply_control
from baton.processors.held_kills import (
    HELD_KILLS_FILE,
    clear_held_kills,
    read_held_kills,
    write_held_kills,
)
from baton.schemas.decision import Reason
from baton.schemas.errors import ConfigError
from baton.schemas.events import KillSwitchReleased
from tests.unit.test_attacks_session9_worker import _ops_policy, _switch
from tests.unit.test_engine_support import at

pytestmark = pytest.mark.unit


def test_the_switches_written_are_held_dated_at_the_restart(tmp_path: Path) -> None:
    scopes = [("tenant", "acme"), ("run", "r1"), ("global", "anything"), ("tenant", "acme")]
    assert write_held_kills(tmp_path / "worker", scopes, 1000.0) == 3
    held = read_held_kills(tmp_path / "worker")
    assert held.tenants == {"acme"} and held.runs == {"r1"} and held.everything
    assert held.killed("a-run-never-seen", "other")  # global: every run
    assert dict(held.latest.items()) == {
        "tenant:acme": 1000.0,
        "run:r1": 1000.0,
        "global:*": 1000.0,
    }
    assert (tmp_path / "worker" / HELD_KILLS_FILE).stat().st_mode & 0o077 == 0


def test_a_start_that_holds_nothing_leaves_no_file(tmp_path: Path) -> None:
    write_held_kills(tmp_path, [("tenant", "acme")], 1.0)
    assert read_held_kills(tmp_path).tenants == {"acme"}
    assert write_held_kills(tmp_path, [], 2.0) == 0
    assert read_held_kills(tmp_path) == NO_KILLS and not (tmp_path / HELD_KILLS_FILE).exists()
    write_held_kills(tmp_path, [("run", "r")], 1.0)
    clear_held_kills(tmp_path)
    clear_held_kills(tmp_path)  # none: nothing to do
    assert read_held_kills(tmp_path) == NO_KILLS


def test_more_switches_than_a_worker_reads_are_held_as_one_global(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart after forged kill rows by the 100k wrote a file its workers refused to read
    (no worker, no decision); it holds everything instead, which one release lifts."""
    from baton.processors import held_kills

    monkeypatch.setattr(held_kills, "MAX_BYTES", 200)
    scopes = [("tenant", f"t{i:05d}") for i in range(50)]
    said: list[str] = []
    assert write_held_kills(tmp_path, scopes, 1.0, said.append) == 1
    held = read_held_kills(tmp_path)
    assert held.everything and not held.tenants
    # said with how many, and which (A2, session 38: the restart named only "global")
    (line,) = said
    assert "50 kill switches to hold (tenant t00000, tenant t00001" in line, line
    assert "ONE global switch" in line


def test_targets_no_event_can_carry_are_not_held(tmp_path: Path) -> None:
    """A forged kill row can name any run id (the restore reads the audit's key columns): one
    no event can carry stops nothing, and is left out rather than refused."""
    forged = [("run", ""), ("run", "r" * 257), ("galaxy", "x"), ("tenant", "t" * 256)]
    assert write_held_kills(tmp_path, forged, 1.0) == 1
    assert read_held_kills(tmp_path).tenants == {"t" * 256}


@pytest.mark.parametrize(
    "text, named",
    [
        ("{", "not the file baton up writes"),
        ("[]", "not the file baton up writes"),
        ('{"scopes": []}', "not the file baton up writes"),
        ('{"held_at": "soon", "scopes": []}', "held_at must be a finite time"),
        ('{"held_at": 1e999, "scopes": []}', "held_at must be a finite time"),
        ('{"held_at": true, "scopes": []}', "held_at must be a finite time"),
        ('{"held_at": 1, "scopes": {"tenant": "acme"}}', "scopes must be a list"),
        ('{"held_at": 1, "scopes": [["tenant"]]}', "scopes[0] must be"),
        ('{"held_at": 1, "scopes": [["galaxy", "x"]]}', "scopes[0] must be"),
        ('{"held_at": 1, "scopes": [["tenant", 7]]}', "scopes[0] must be"),
        ('{"held_at": 1, "scopes": [["run", ""]]}', "scopes[0] must be"),
        ('{"held_at": 1, "scopes": [["run", "' + "r" * 257 + '"]]}', "scopes[0] must be"),
    ],
)
def test_a_file_that_does_not_read_as_written_stops_the_worker_naming_it(
    tmp_path: Path, text: str, named: str
) -> None:
    """Fail closed: a worker that cannot tell which switches to hold does not start."""
    (tmp_path / HELD_KILLS_FILE).write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_held_kills(tmp_path)
    assert str(tmp_path / HELD_KILLS_FILE) in str(caught.value) and named in str(caught.value)


def test_a_held_file_that_is_a_directory_or_too_large_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a" / HELD_KILLS_FILE).mkdir(parents=True)
    with pytest.raises(ConfigError, match="is a directory"):
        read_held_kills(tmp_path / "a")
    (tmp_path / "b").mkdir()
    with (tmp_path / "b" / HELD_KILLS_FILE).open("wb") as big:
        big.truncate(33 * 1024 * 1024)
    with pytest.raises(ConfigError, match="larger than"):
        read_held_kills(tmp_path / "b")


def test_only_a_release_signed_after_the_restart_lifts_a_held_switch(tmp_path: Path) -> None:
    """With operators, the held switch is dated at the restart: the release an operator had
    signed before it (re-issued by the restart, or replayed by a writer of gov.control) is a
    replay; an unsigned one counts for nothing; one signed after it lifts the switch."""
    policy = _ops_policy()
    write_held_kills(tmp_path, [("tenant", "acme")], at(100).timestamp())
    kills = read_held_kills(tmp_path)
    for release, reason in [
        (_switch(KillSwitchReleased, 50, scope="tenant", tenant="acme"), Reason.CONTROL_REPLAYED),
        (_switch(KillSwitchReleased, 150, scope="tenant", tenant="acme", key=None),
         Reason.CONTROL_UNSIGNED),
    ]:  # fmt: skip
        kills, record = apply_control(kills, release, policy, at(200))
        assert record.reason == reason and kills.killed("new-run", "acme")
    later = _switch(KillSwitchReleased, 150, scope="tenant", tenant="acme")
    kills, record = apply_control(kills, later, policy, at(200))
    assert record.reason == Reason.KILL_SWITCH_RELEASED and not kills.killed("new-run", "acme")


def test_the_restart_names_the_switches_its_workers_hold(tmp_path: Path) -> None:
    write_held_kills(
        tmp_path / "worker", [("tenant", "acme"), ("run", "r\x1b[2J"), ("global", "*")], 1.0
    )
    said: list[str] = []
    up_restart._name_held_kill_switches(tmp_path, said.append)
    (line,) = said
    assert "3 kill switch(es) in force before this restart cannot be issued again" in line
    assert "run r\\x1b[2J, tenant acme, global" in line and "\x1b" not in line
    assert "the workers hold them from their start" in line
    said.clear()
    clear_held_kills(tmp_path / "worker")
    up_restart._name_held_kill_switches(tmp_path, said.append)
    assert said == []


def test_a_worker_starts_holding_the_switches_of_its_data_dir(tmp_path: Path) -> None:
    """The worker's control follower begins with the held switches (not NO_KILLS)."""
    from baton.processors.app import GovernanceWorker
    from baton.schemas.policy import load_policy
    from baton.schemas.settings import Settings

    write_held_kills(tmp_path, [("tenant", "acme")], 1.0)
    worker = GovernanceWorker(
        Settings(bootstrap="127.0.0.1:1", worker_data_dir=tmp_path), load_policy(None), "w"
    )
    assert worker.control.kills.killed("new-run", "acme")
    (tmp_path / HELD_KILLS_FILE).write_text(json.dumps({"held_at": 1}))
    with pytest.raises(ConfigError, match="kill switches to hold"):
        GovernanceWorker(
            Settings(bootstrap="127.0.0.1:1", worker_data_dir=tmp_path), load_policy(None), "w"
        )


def test_a_forged_release_after_a_lost_kill_does_not_lift_it_across_a_restart() -> None:
    """Session 38, H4: a second release row in a worker's shape (its own id, no command),
    written after a kill whose command is lost, read as lifting it: the restart held nothing
    and a brand-new run of the tenant was allowed. A release lifts a switch across a restart
    only when the re-issued commands, folded, applied one to it."""
    from datetime import UTC, datetime

    from baton.cli.restart_notice import as_made
    from baton.cli.restore_kills import fold_reissued, unheld_kill_scopes
    from baton.processors.recorded import input_text
    from baton.schemas.decision import Phase, decision_id_for
    from baton.schemas.policy import load_policy

    def row(reason: str, request_id: str, command: str = "") -> tuple[str, ...]:
        made = decision_id_for("*", request_id, Phase.CONTROL)
        return as_made((reason, "*", "acme", "scope=tenant target=acme", command, made, request_id))

    kill = row("kill_switch", "kill_switch:tenant:acme:2026-01-01T00:00:00+00:00")
    released = row(
        "kill_switch_released", "kill_switch_released:tenant:acme:2026-01-01T00:05:00+00:00"
    )
    now = datetime.now(UTC)
    dated = [(at(10).timestamp(), kill), (at(20).timestamp(), released)]
    kills, _ = fold_reissued([], load_policy(None), now)
    assert unheld_kill_scopes(dated, kills) == [("tenant", "acme")]
    # a release the restart re-issues (and the fresh workers apply), signed after it, lifts it
    release = _switch(KillSwitchReleased, 50, scope="tenant", tenant="acme")
    kills, _ = fold_reissued([input_text(release)], _ops_policy(), at(100))
    assert unheld_kill_scopes(dated, kills) == []
    # one signed before the lost kill does not (session 38, A2: kill t0, release t5, kill t10
    # lost; the re-issued release read as lifting it)
    later = [(at(60).timestamp(), kill), (at(70).timestamp(), released)]
    assert unheld_kill_scopes(later, kills) == [("tenant", "acme")]
    assert unheld_kill_scopes(later[:1], kills) == [("tenant", "acme")]
    # a release of a switch no kill record engaged holds nothing
    no_kills = fold_reissued([], load_policy(None), now)[0]
    assert unheld_kill_scopes([(at(20).timestamp(), released)], no_kills) == []
