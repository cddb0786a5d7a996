"""Which kill switches and policy a restart of `baton up` loses: the audit's control records."""

from __future__ import annotations

from baton.cli.restart_notice import PolicyInForce, fold_kill_switches, fold_policy_in_force


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


def test_a_kill_whose_command_is_recorded_is_reissued_not_lost() -> None:
    records = [
        ("kill_switch", "run_1", "*", "scope=run target=run_1 reason=x", '{"type":"kill_switch"}'),
        ("kill_switch", "run_2", "*", "scope=run target=run_2 reason=x", ""),  # older audit
    ]
    assert fold_kill_switches(records) == ["run run_2"]


def test_a_run_id_is_shown_without_terminal_escapes() -> None:
    records = [("kill_switch", "run_\x1b[2Jx", "*", "scope=run target=run_\x1b[2Jx reason=")]
    assert fold_kill_switches(records) == ["run run_\\x1b[2Jx"]


def test_no_records_no_switches() -> None:
    assert fold_kill_switches([]) == []


def test_the_policy_in_force_is_the_last_recorded_with_who_published_it() -> None:
    records = [
        ("policy_in_force", "seed", "", "2026-11-29 10:00:00", ""),
        ("policy_updated", "signed", "oncall", "2026-11-29 10:05:00", '{"signature": "ed"}'),
        ("policy_in_force", "signed", "", "2026-11-29 10:05:00", ""),
        ("kill_switch", "signed", "oncall", "2026-11-29 10:06:00", ""),  # not a policy record
        ("command_unsigned", "forged", "mallory", "2026-11-29 10:07:00", "{}"),  # refused
    ]
    assert fold_policy_in_force(records) == PolicyInForce(
        "signed", "oncall", "2026-11-29 10:05:00", reissued=True
    )


def test_an_unsigned_or_unrecorded_publication_is_not_reissued() -> None:
    for command in ("", "{}", '{"signature": null}', "not json", "[1]"):
        records = [("policy_updated", "v2", "oncall", "t", command)]
        assert fold_policy_in_force(records) == PolicyInForce("v2", "oncall", "t", False)


def test_a_policy_from_the_file_names_no_publisher_and_no_records_no_policy() -> None:
    assert fold_policy_in_force([("policy_in_force", "file", "", "t", "")]) == PolicyInForce(
        "file", None, "t"
    )
    assert fold_policy_in_force([]) is None
