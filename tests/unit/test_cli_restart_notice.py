"""Which kill switches a restart of `baton up` loses: the audit's control records, folded."""

from __future__ import annotations

from baton.cli.restart_notice import fold_kill_switches


def test_the_last_applied_command_of_each_switch_decides() -> None:
    records = [
        ("kill_switch", "run_1", "*", "scope=run target=run_1 reason=x"),
        ("kill_switch", "run_2", "*", "scope=run target=run_2 reason=x"),
        ("kill_switch_released", "run_1", "*", "scope=run target=run_1 reason=ok"),
        ("kill_switch", "*", "acme", "scope=tenant target=acme reason=x"),
        ("kill_switch", "*", "*", "scope=global target=* reason=x"),
        ("kill_switch_released", "*", "*", "scope=global target=* reason=ok"),
        # a refused release (forged, replayed) lifts nothing
        ("command_unsigned", "run_2", "*", "scope=run target=run_2 reason=x; refused: ..."),
    ]
    assert fold_kill_switches(records) == ["run run_2", "tenant acme"]


def test_a_run_id_is_shown_without_terminal_escapes() -> None:
    records = [("kill_switch", "run_\x1b[2Jx", "*", "scope=run target=run_\x1b[2Jx reason=")]
    assert fold_kill_switches(records) == ["run run_\\x1b[2Jx"]


def test_no_records_no_switches() -> None:
    assert fold_kill_switches([]) == []
