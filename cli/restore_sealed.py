"""The commands a ``baton up`` restart re-issues when the workers seal their records.

With ``BATON_AUDIT_CHAIN_KEY`` every worker seals the control record of each operator's
command (``processors/control_seal``), and the sink keeps every such record ever stored in
``governance.control_log`` (migration 0010: no later row replaces one). A restart with the key
re-issues the applied commands whose record's seal verifies, each once, in the order the sink
first stored them (its clock: no writer of gov.decisions sets it): a row forged into
gov.decisions, a copy altered, re-labelled (a refusal as applied) or re-keyed, is not issued
again, and replacing a sealed row in ``decisions`` takes nothing from the log.

An audit from before the seals: its records stored before the first sealed one (``legacy``)
are read from the log too (the first copy of each: a row forged after the first sealed one
cannot replace them) and judged by the rules for unauthenticated rows (restore_kills,
restore_withhold); they are sealed when the restart's workers record them again. A command
record stored after the first sealed one without a seal that verifies (forged, or sealed under
another key) is not issued again, and named: a kill it would have re-issued is held by the
restart's rules for lost kills (fail closed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from baton.processors.control_seal import is_sealed
from baton.sinks.render import shown

__all__ = ["SealedCommands", "read_sealed", "say_unsealed"]

_SEAL_SHAPE = re.compile(r"[0-9a-f]{32}").fullmatch
#: the reasons of a command the workers applied (what a restart re-issues)
_APPLIED = ("kill_switch", "kill_switch_released", "policy_updated")
_LOG_SQL = """
SELECT decision_id, request_id, run_id, tenant, phase, outcome, reason, approver, event_time,
       input, seal, inserted_at
FROM {db}.control_log
ORDER BY inserted_at, decided_at, audit_partition, audit_offset
"""


@dataclass
class SealedCommands:
    """What the control log says: the sealed applied commands, in order, and the rest."""

    #: the commands to issue again, in order: those whose record a worker sealed, and the
    #: ``legacy`` ones
    commands: list[str] = field(default_factory=list)
    #: of them, the unsealed ones stored before the first sealed record (an audit from
    #: before the seals): judged by the rules for unauthenticated rows
    legacy: list[str] = field(default_factory=list)
    #: request ids of applied records stored after it whose seal does not verify
    unsealed: list[str] = field(default_factory=list)
    #: whether any record's seal verifies (else the audit predates the seals, or the key)
    any_sealed: bool = False
    #: records carrying a seal's shape that does not verify (another key's, or forged)
    foreign: int = 0


def read_sealed(client: Any, key: bytes) -> SealedCommands:
    """The control log's records judged by their seals under ``key`` (module doc)."""
    from baton.sinks.schema import DATABASE

    out = SealedCommands()
    if not client.command(f"EXISTS TABLE {DATABASE}.control_log"):
        return out
    rows = client.query(_LOG_SQL.format(db=DATABASE)).result_rows
    verified = [is_sealed(key, row[:-2], row[-2]) for row in rows]
    out.any_sealed = any(verified)
    out.foreign = sum(
        1 for row, ok in zip(rows, verified, strict=True) if not ok and _SEAL_SHAPE(row[-2] or "")
    )
    texts: dict[str, str] = {}  # id -> the command of its first sealed applied copy
    for row, ok in zip(rows, verified, strict=True):
        if ok and row[6] in _APPLIED and row[9] is not None:
            texts.setdefault(row[0], str(row[9]))
    # a command's place: its first copy (one stored before the seals began: the original, and
    # a legacy command sealed again by a restart keeps it), else its first sealed copy
    placed: dict[str, tuple[bool, str]] = {}  # id -> (sealed, command), in order
    era_began = False
    for row, ok in zip(rows, verified, strict=True):
        era_began = era_began or ok
        decision_id, request_id, reason, text = row[0], row[1], row[6], row[9]
        if reason not in _APPLIED or text is None or decision_id in placed:
            continue
        if decision_id in texts:
            if ok or not era_began:
                placed[decision_id] = (True, texts[decision_id])
        elif era_began:
            out.unsealed.append(str(request_id))
        else:
            placed[decision_id] = (False, str(text))
    out.commands = [text for _, text in placed.values()]
    out.legacy = [text for sealed, text in placed.values() if not sealed]
    return out


def say_unsealed(sealed: SealedCommands, say: Callable[[str], None]) -> None:
    """The warnings for applied records that carry no worker's seal, and for an audit whose
    seals no record verifies under this key (none: nothing said)."""
    if sealed.foreign and not sealed.any_sealed:
        say(
            f"restore: WARNING: {sealed.foreign} command record(s) carry a seal that "
            "BATON_AUDIT_CHAIN_KEY does not verify, and none does: is it the workers' key? The "
            "commands are judged as unsealed ones (an audit from before the seals)"
        )
    if not sealed.unsealed:
        return
    names = ", ".join(shown(r) for r in sealed.unsealed[:3])
    more = " ..." if len(sealed.unsealed) > 3 else ""
    say(
        f"restore: WARNING: {len(sealed.unsealed)} command record(s) of the audit carry no "
        f"worker's seal ({names}{more}): forged into gov.decisions, or sealed under another "
        "BATON_AUDIT_CHAIN_KEY; NOT issued again (a kill among them is held)"
    )
