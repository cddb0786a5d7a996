"""A restart after an operator-signed update emptied the operators: in that gap the live
workers verified nothing, and a forged policy update re-issued there made the forger an
operator, whose release then counted (session 39, A3). A release or policy update in the gap
is verified against the operators in force before it; one they refuse is not issued again,
and a restart whose policy would then end without the operators the records end with stops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from baton.cli.restore_kills import fold_reissued
from baton.cli.restore_withhold import refuse_operators_lost
from baton.processors.recorded import input_text
from baton.schemas.errors import ConfigError
from baton.schemas.events import KillSwitch, KillSwitchReleased, PolicyUpdated
from baton.schemas.policy import parse_policy
from baton.schemas.signing import (
    control_payload,
    new_private_key,
    policy_hash,
    public_key_text,
    sign,
)

pytestmark = pytest.mark.unit

ONCALL, MALLORY, NEWBIE = new_private_key(), new_private_key(), new_private_key()
T0 = datetime.now(UTC) - timedelta(hours=1)


def _ops(**keys: object) -> str:
    listed = "".join(f'  {name}: "{public_key_text(key)}"\n' for name, key in keys.items())
    return f"operators:\n{listed}" if listed else "multi_agent: {max_handoffs: 8}\n"


def _update(text: str, minutes: int, name: str, key: object) -> str:
    when = T0 + timedelta(minutes=minutes)
    payload = control_payload("policy_updated", "global", "*", name, "", when, policy_hash(text))
    event = PolicyUpdated(
        policy_yaml=text, operator=name, signature=sign(key, payload), event_time=when
    )
    return input_text(event)


def _switch(kind: type, minutes: int, name: str, key: object) -> str:
    when = T0 + timedelta(minutes=minutes)
    kind_name = kind.model_fields["type"].default
    payload = control_payload(kind_name, "tenant", "acme", name, "", when)
    event = kind(
        scope="tenant", tenant="acme", operator=name, signature=sign(key, payload),
        event_time=when,
    )  # fmt: skip
    return input_text(event)


def test_a_forged_operator_in_the_gap_is_not_issued_again() -> None:
    start = parse_policy(_ops(oncall=ONCALL), "start")
    kill = _switch(KillSwitch, 1, "oncall", ONCALL)
    emptied = _update(_ops(), 2, "oncall", ONCALL)  # an operator empties the list
    forged = _update(_ops(mallory=MALLORY), 3, "mallory", MALLORY)  # a row in gov.decisions
    released = _switch(KillSwitchReleased, 4, "mallory", MALLORY)
    back = _update(_ops(oncall=ONCALL), 5, "oncall", ONCALL)
    commands = [kill, emptied, forged, released, back]
    now = datetime.now(UTC)
    assert not fold_reissued(commands, start, now)[0].tenants  # the hole: the kill lifted
    withheld: set[str] = set()
    ended: list = []
    kills, _ = fold_reissued(commands, start, now, unverifiable=withheld, ended=ended)
    assert withheld == {forged, released} and kills.tenants == {"acme"}
    assert list(ended[0].operators) == ["oncall"]  # oncall's own update re-adds them
    refuse_operators_lost(commands, withheld, start, now, ended[0])  # nothing lost


def test_operators_re_added_by_no_earlier_operator_stop_the_restart() -> None:
    start = parse_policy(_ops(oncall=ONCALL), "start")
    emptied = _update(_ops(), 2, "oncall", ONCALL)
    newbie = _update(_ops(newbie=NEWBIE), 3, "newbie", NEWBIE)
    commands = [emptied, newbie]
    now = datetime.now(UTC)
    withheld: set[str] = set()
    plain: list = []
    fold_reissued(commands, start, now, ended=plain)
    fold_reissued(commands, start, now, unverifiable=withheld)
    assert withheld == {newbie} and list(plain[0].operators) == ["newbie"]
    with pytest.raises(ConfigError, match=r"end with operators \(newbie\).*--policy FILE"):
        refuse_operators_lost(commands, withheld, start, now, plain[0])


def test_a_start_without_operators_still_takes_its_first_signed_publication() -> None:
    start = parse_policy(_ops(), "seed-like")
    first = _update(_ops(oncall=ONCALL), 2, "oncall", ONCALL)
    withheld: set[str] = set()
    ended: list = []
    fold_reissued([first], start, datetime.now(UTC), unverifiable=withheld, ended=ended)
    assert withheld == set() and list(ended[0].operators) == ["oncall"]


def test_the_restart_stops_when_what_it_withholds_drops_the_operators() -> None:
    """Round 4 (session 39): the check compared the withheld fold with itself and never
    fired: start {oncall}, oncall empties the list, newbie publishes {newbie}; the restart
    withheld newbie's update and its workers ran without operators, unsaid."""
    from baton.cli.restore_withhold import withhold

    start = parse_policy(_ops(oncall=ONCALL), "start")
    emptied = _update(_ops(), 2, "oncall", ONCALL)
    newbie = _update(_ops(newbie=NEWBIE), 3, "newbie", NEWBIE)
    with pytest.raises(ConfigError, match=r"end with operators \(newbie\)"):
        withhold([emptied, newbie], set(), start, datetime.now(UTC), [].append)
    # the advice: a start policy naming newbie gives them back
    named = parse_policy(_ops(newbie=NEWBIE), "named")
    kept = withhold([emptied, newbie], set(), named, datetime.now(UTC), [].append)
    assert newbie in kept


def test_a_refusal_record_never_withholds_a_policy_update() -> None:
    """Round 4 (session 39): a forged refusal record of oncall's update revoking mallory
    withheld it at the restart; mallory stayed an operator and her own release lifted a kill.
    Only releases are withheld on a refusal record (withholding one only keeps a kill)."""
    from baton.cli.restore_kills import refused_before

    revoke = _update(_ops(oncall=ONCALL), 2, "oncall", ONCALL)
    assert refused_before(None, [revoke]) == set()  # not even looked up
