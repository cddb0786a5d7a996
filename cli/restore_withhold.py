"""What a ``baton up`` restart must not issue again of the audit's recorded commands.

Releases a worker refused before the restart (a copy forged into gov.decisions of one refused
live), releases and policy updates no operator's key verifies (the policy listed none where
they fall, or not theirs after an update emptied the list), and every release when a policy
record was replaced (the update lost may have revoked its signer). Withholding a release only
keeps a kill held; a restart whose withheld updates would leave its workers without the
operators the recorded commands end with stops.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from baton.cli.restore_kills import fold_reissued
from baton.schemas.policy import Policy
from baton.sinks.render import shown

__all__ = ["refuse_operators_lost", "withhold", "without_releases"]


def withhold(
    commands: list[str],
    refused_live: set[str],
    start: Policy | None,
    now: datetime,
    say: Callable[[str], None],
    sealed: frozenset[str] = frozenset(),
) -> list[str]:
    """``commands`` without the ones a restart must not issue again, each kind said: releases
    a worker refused before it (:func:`refused_before`), and releases and policy updates no
    operator's key can verify (``fold_reissued``'s ``unverifiable``); the restart stops when
    those leave its workers without the operators the recorded commands end with. A release
    in ``sealed`` (a worker vouched it applied it) is not withheld for a refusal record: one
    refused live and applied at a later worker start was held again. One no operator's key
    verifies is withheld sealed or not: the live workers applied such commands in the topic's
    order, and a restart re-issues in the order of the times they carry (a signed release
    then a kill dated before it, both applied live, the kill holding: re-issued, the release
    lifted it)."""
    refused_live = refused_live - sealed
    unverifiable: set[str] = set()
    if start is not None:
        kept = [text for text in commands if text not in refused_live]
        fold_reissued(kept, start, now, unverifiable=unverifiable)
        plain: list[Policy] = []  # what the recorded commands end with, nothing withheld
        fold_reissued(commands, start, now, ended=plain)
        refuse_operators_lost(kept, unverifiable, start, now, plain[0])
    if refused_live:
        say(
            f"restore: WARNING: {len(refused_live)} release(s) recorded as applied were refused "
            "by a worker before this restart (their refusal is in the audit: a copy forged "
            "into gov.decisions, one signed on a clock too far ahead, refused at an earlier "
            "restart by another --policy or as a replay of a switch it held): NOT issued "
            f"again ({_named(refused_live)}); release again, signed anew, what should be lifted"
        )
    if unverifiable:
        say(
            f"restore: {len(unverifiable)} signed release(s) or policy update(s) NOT issued "
            "again: no operator's key verifies them (the policy listed none where they fall, "
            "or not theirs after an update emptied the list), and any writer of gov.decisions "
            "could have recorded them; the kills they lifted hold again, the policy before "
            f"them stays ({_named(unverifiable)}; release or publish again, signed by an "
            "operator)"
        )
    return [text for text in commands if text not in refused_live | unverifiable]


def _named(texts: set[str], first: int = 3) -> str:
    """The first of ``texts`` (recorded commands) as ``release of tenant T by NAME at TIME``:
    which switch stays held, or which publication is not in force (session 39, round 4)."""
    from baton.schemas.events import KillSwitchReleased, parse_control_event

    names = []
    for text in sorted(texts)[:first]:
        try:
            event = parse_control_event(text.encode())
        except Exception:
            continue
        what = (
            f"release of {'everything' if event.scope == 'global' else event.scope} "
            f"{'' if event.scope == 'global' else shown(event.target)}".rstrip()
            if isinstance(event, KillSwitchReleased)
            else "policy update"
        )
        names.append(f"{what} by {shown(event.operator)} at {event.event_time.isoformat()[:19]}")
    more = f" and {len(texts) - first} more" if len(texts) > first else ""
    return ", ".join(names) + more


def without_releases(commands: list[str], sealed: frozenset[str] = frozenset()) -> list[str]:
    """``commands`` but the releases not in ``sealed`` (a worker applied those): the kills they
    lifted hold again (fail closed)."""
    from baton.schemas.events import KillSwitchReleased, parse_control_event

    def release(text: str) -> bool:
        try:
            return isinstance(parse_control_event(text.encode()), KillSwitchReleased)
        except Exception:
            return False  # named where the commands are re-issued

    return [text for text in commands if text in sealed or not release(text)]


def refuse_operators_lost(
    kept: list[str], unverifiable: set[str], start: Policy, now: datetime, plain: Policy
) -> None:
    """ConfigError when the commands not issued again (``unverifiable``) leave the fresh
    workers without the operators the recorded ones end with (``plain``): an update re-adding
    operators after a gap, signed by no operator of before it, would switch signing off."""
    if not unverifiable or not plain.operators:
        return
    ended: list[Policy] = []
    fold_reissued([t for t in kept if t not in unverifiable], start, now, ended=ended)
    if not ended[0].operators:
        from baton.schemas.errors import ConfigError

        raise ConfigError(
            "restore: the recorded policy updates end with operators ("
            + ", ".join(shown(n) for n in sorted(plain.operators)[:8])
            + ") that this restart cannot give back: an update giving them was signed by no "
            "operator in force before it, so it is not issued again; start with --policy FILE "
            "naming the operators"
        )
