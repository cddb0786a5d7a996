"""The commands a ``baton up`` restart re-issues when the workers seal their records.

Every worker seals the control record of each operator's command (``processors/
control_seal``: with BATON_AUDIT_CHAIN_KEY, else the data dir's ``worker/seal.key``), and the
sink keeps every such record ever stored in ``governance.control_log`` (migration 0010: no
later row replaces one). A restart re-issues the applied commands whose record's seal
verifies, each once, in the order the sink first stored them (its clock: no writer of
gov.decisions sets it): a row forged into gov.decisions, a copy altered, re-labelled (a
refusal as applied) or re-keyed, is not issued again, and replacing a sealed row in
``decisions`` takes nothing from the log.

An audit from before the seals: its records stored before the control log was made (migration
0010: a forger cannot store a row before then) are ``legacy``, read from the log too (the
first copy of each) and judged by the rules for unauthenticated rows (restore_kills,
restore_withhold); the restart's workers seal them when they record them again. A command
record stored after 0010 without a seal that verifies (forged; sealed under another key;
recorded while the workers ran without the key) is not issued again, and named: a kill it
would have re-issued is held by the restart's rules for lost kills (fail closed), and so is
any unsealed kill row (a record sealed under a key the restart lacks cannot be told from a
forgery). A sealed kill is never taken as lost: the log keeps it, whatever replaced its row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from baton.processors.control_seal import is_sealed
from baton.sinks.render import shown_cut

__all__ = ["SealedCommands", "audit_seal_keys", "read_sealed", "say_unsealed"]

_SEAL_SHAPE = re.compile(r"[0-9a-f]{32}").fullmatch
#: the reasons of a command the workers applied (what a restart re-issues)
_APPLIED = ("kill_switch", "kill_switch_released", "policy_updated")
_LOG_SQL = """
SELECT decision_id, request_id, run_id, tenant, phase, outcome, reason, approver, event_time,
       input, seal,
       -- stored before the log was made (0010): what an audit from before the seals holds,
       -- and a forger cannot store a row before then
       inserted_at < (SELECT max(applied_at) FROM {db}.schema_migrations WHERE version = 10),
       inserted_at
FROM {db}.control_log
ORDER BY inserted_at, decided_at, audit_partition, audit_offset
"""


@dataclass
class SealedCommands:
    """What the control log says: the sealed applied commands, in order, and the rest."""

    #: the commands to issue again, in order: those whose record a worker sealed, and the
    #: ``legacy`` ones
    commands: list[str] = field(default_factory=list)
    #: of them, the unsealed ones stored before migration 0010 (an audit from before the
    #: seals): judged by the rules for unauthenticated rows
    legacy: list[str] = field(default_factory=list)
    #: ``(decision_id, reason, run_id, tenant, command, stored at)`` of each sealed applied
    #: command (its first verified copy), in order: what the restart's kill rules read of them
    sealed_rows: list[tuple[str, str, str, str, str, datetime]] = field(default_factory=list)
    #: request ids of applied records stored after 0010 whose seal does not verify
    unsealed: list[str] = field(default_factory=list)
    #: whether any record's seal verifies (else the audit predates the seals, or the key)
    any_sealed: bool = False
    #: the decision ids of the sealed applied commands
    sealed_ids: set[str] = field(default_factory=set)
    #: records carrying a seal's shape that does not verify (another key's, or forged)
    foreign: int = 0


def read_sealed(client: Any, keys: list[bytes], since: datetime | None = None) -> SealedCommands:
    """The control log's records judged by their seals under ``keys`` (module doc); ``since``:
    name only the unsealed ones stored at or after it (`baton audit verify --since`)."""
    from baton.sinks.schema import DATABASE

    out = SealedCommands()
    if not client.command(f"EXISTS TABLE {DATABASE}.control_log"):
        return out
    rows = client.query(_LOG_SQL.format(db=DATABASE)).result_rows
    # (each row: the SEAL_FIELDS values, its seal, stored before 0010, when it was stored)
    verified = [any(is_sealed(k, row[:-3], row[-3]) for k in keys) for row in rows]
    out.any_sealed = any(verified)
    out.foreign = sum(
        1 for row, ok in zip(rows, verified, strict=True) if not ok and _SEAL_SHAPE(row[-3] or "")
    )
    firsts: dict[str, tuple[str, str, str, str, str, datetime]] = {}  # id -> its first
    for row, ok in zip(rows, verified, strict=True):  # sealed applied copy (sealed_rows')
        if ok and row[6] in _APPLIED and row[9] is not None:
            first = (row[0], row[6], row[2], row[3], str(row[9]), _utc(row[-1]))
            firsts.setdefault(row[0], first)
    texts = {ident: first[4] for ident, first in firsts.items()}
    out.sealed_ids = set(firsts)
    # a command's place: its first copy (one stored before 0010: the original; a legacy
    # command sealed again by a restart keeps it), else its first sealed copy
    placed: dict[str, tuple[bool, str]] = {}  # id -> (sealed, command), in order
    for row, ok in zip(rows, verified, strict=True):
        decision_id, request_id, reason, text = row[0], row[1], row[6], row[9]
        if reason not in _APPLIED or text is None or decision_id in placed:
            continue
        before = bool(row[-2])
        if decision_id in texts:
            if ok or before:
                placed[decision_id] = (True, texts[decision_id])
                out.sealed_rows.append(firsts[decision_id])
        elif before:
            placed[decision_id] = (False, str(text))
        elif since is None or _utc(row[-1]) >= since:
            out.unsealed.append(str(request_id))
    out.commands = [text for _, text in placed.values()]
    out.legacy = [text for sealed, text in placed.values() if not sealed]
    return out


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def say_unsealed(sealed: SealedCommands, say: Callable[[str], None]) -> None:
    """The warnings for applied records that carry no worker's seal, and for an audit whose
    seals no record verifies under this key (none: nothing said)."""
    if sealed.foreign and not sealed.any_sealed:
        say(
            f"restore: WARNING: {sealed.foreign} command record(s) carry a seal that no key "
            "here verifies, and none does (BATON_AUDIT_CHAIN_KEY, DATA_DIR/worker/seal.key): "
            "are they the workers' keys? Those recorded after the seals began are not issued "
            "again (their kills are held)"
        )
    if not sealed.unsealed:
        return
    names = ", ".join(shown_cut(r, 200) for r in sealed.unsealed[:3])
    more = " ..." if len(sealed.unsealed) > 3 else ""
    say(
        f"restore: WARNING: {len(sealed.unsealed)} command record(s) of the audit carry no "
        f"worker's seal ({names}{more}): forged into gov.decisions, sealed under another key "
        "(BATON_AUDIT_CHAIN_KEY, DATA_DIR/worker/seal.key), or recorded while the workers "
        "had none; NOT issued again (a kill among them is held; release or publish again "
        "what should be in force)"
    )


def audit_seal_keys(settings: Any, chdb_path: Path | None) -> list[bytes]:
    """The keys `baton audit verify` checks seals with: BATON_AUDIT_CHAIN_KEY, and the seal.key
    of the `baton up` data dir whose audit ``chdb_path`` is (``DATA_DIR/chdb``) when readable."""
    from baton.processors.control_seal import chain_key, read_seal_key
    from baton.schemas.errors import ConfigError

    keys = [chain_key(settings)]
    # (another user's stack, or a damaged key: said as unchecked when no key is left)
    with suppress(ConfigError):
        keys.append(read_seal_key(chdb_path.parent / "worker") if chdb_path else b"")
    return [k for k in keys if k]
