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
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from baton.processors.control_seal import is_sealed
from baton.sinks.render import shown_cut

__all__ = [
    "POLICY_RECORDS",
    "SealedCommands",
    "audit_seal_keys",
    "read_sealed",
    "say_unsealed",
    "sealed_policy_records",
]

_SEAL_SHAPE = re.compile(r"[0-9a-f]{32}").fullmatch
#: the reasons of a command the workers applied (what a restart re-issues)
_APPLIED = ("kill_switch", "kill_switch_released", "policy_updated")
#: the control records that say which policy the workers used: the policy a worker decides
#: under, and a policy update applied
POLICY_RECORDS = ("policy_in_force", "policy_updated")
#: about how many bytes of commands a page of the log holds, and its first and most rows (and
#: every row stored at the time of the last: an insert's rows are read together, in the order
#: the sink first stored them): the restart and `baton audit verify` hold a page, never the
#: log (a flood of refusals, 64 KB commands that a worker refused and sealed, is stored and
#: kept across restarts: 600 MB of them took 3.5 GB to read whole, 0.6 GB a page at a time)
PAGE_BYTES = 16 << 20
PAGE_ROWS = 32
MIN_PAGE_ROWS, MAX_PAGE_ROWS = 16, 20_000
#: the unsealed records named (request ids, ``say_unsealed`` and verify name the first)
NAMED_UNSEALED = 100
_LOG_SQL = """
SELECT decision_id, request_id, run_id, tenant, phase, outcome, reason, approver, event_time,
       input, seal,
       -- stored before the log was made (0010): what an audit from before the seals holds,
       -- and a forger cannot store a row before then
       inserted_at < (SELECT max(applied_at) FROM {db}.schema_migrations WHERE version = 10),
       inserted_at, decided_at, audit_partition, audit_offset
FROM {db}.control_log
WHERE inserted_at > {{at:DateTime64(6, 'UTC')}}{applied}
ORDER BY inserted_at
LIMIT {{rows:UInt32}} WITH TIES
"""
#: a log row: SEAL_FIELDS' values, then these
_SEAL, _BEFORE, _STORED = 10, 11, 12
_START = datetime(1900, 1, 1, tzinfo=UTC)  # DateTime64's first day


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
    #: request ids of the first NAMED_UNSEALED applied records stored after 0010 whose seal
    #: does not verify (``unsealed_count``: how many there are)
    unsealed: list[str] = field(default_factory=list)
    unsealed_count: int = 0
    #: whether any record's seal verifies (else the audit predates the seals, or the key)
    any_sealed: bool = False
    #: the decision ids of the sealed applied commands
    sealed_ids: set[str] = field(default_factory=set)
    #: records carrying a seal's shape that does not verify (another key's, or forged)
    foreign: int = 0


def read_sealed(client: Any, keys: list[bytes], since: datetime | None = None) -> SealedCommands:
    """The control log's records judged by their seals under ``keys`` (module doc); ``since``:
    name only the unsealed ones stored at or after it (`baton audit verify --since`).

    Two reads of the log, a page at a time: the first finds each sealed applied command's first
    verified copy, the second places the commands (a command's place is its first copy: one
    stored before 0010, the original, which a restart sealed again, keeps it) and counts the
    applied records no seal vouches for."""
    from baton.sinks.schema import DATABASE

    out = SealedCommands()
    if not client.command(f"EXISTS TABLE {DATABASE}.control_log"):
        return out
    firsts: dict[str, tuple[str, str, str, str, str, datetime]] = {}  # id -> its first
    last = _START  # (the second read ends where this one did: a sink may be storing more)
    for row in _pages(client):  # sealed applied copy (sealed_rows')
        ok = _verified(keys, row)
        last = row[_STORED]
        out.any_sealed = out.any_sealed or ok
        if not ok and _SEAL_SHAPE(row[_SEAL] or ""):
            out.foreign += 1
        if ok and row[6] in _APPLIED and row[9] is not None:
            first = (row[0], row[6], row[2], row[3], str(row[9]), _utc(row[_STORED]))
            firsts.setdefault(row[0], first)
    out.sealed_ids = set(firsts)
    placed: dict[str, tuple[bool, str]] = {}  # id -> (sealed, command), in order
    for row in _pages(client, until=_utc(last)):
        decision_id, request_id, text = row[0], row[1], row[9]
        if text is None or decision_id in placed:
            continue
        before = bool(row[_BEFORE])
        first = firsts.get(decision_id)
        if first is not None:  # (a seal checked only here: not for each row of a flood again)
            if before or _verified(keys, row):
                placed[decision_id] = (True, first[4])
                out.sealed_rows.append(first)
        elif before:
            placed[decision_id] = (False, str(text))
        elif since is None or _utc(row[_STORED]) >= since:
            out.unsealed_count += 1
            if len(out.unsealed) < NAMED_UNSEALED:
                out.unsealed.append(str(request_id)[:256])
    out.commands = [text for _, text in placed.values()]
    out.legacy = [text for sealed, text in placed.values() if not sealed]
    return out


def _verified(keys: list[bytes], row: tuple[Any, ...]) -> bool:
    """Whether the log ``row``'s seal verifies under one of ``keys``."""
    return any(is_sealed(k, row[:_SEAL], row[_SEAL]) for k in keys)


def _pages(
    client: Any, until: datetime | None = None, reasons: tuple[str, ...] = ()
) -> Iterator[tuple[Any, ...]]:
    """Each row of the control log in the order the sink stored them (an insert's rows by when
    their workers decided them and where they were read); ``until``: only applied commands'
    records stored no later than it; ``reasons``: only records of these."""
    from baton.sinks.schema import DATABASE

    applied = (
        " AND reason IN {applied:Array(String)} AND inserted_at <= {until:DateTime64(6, 'UTC')}"
        if until is not None
        else ""
    )
    applied += " AND reason IN {reasons:Array(String)}" if reasons else ""
    sql = _LOG_SQL.format(db=DATABASE, applied=applied)
    at, limit = _START, PAGE_ROWS
    while True:
        params = {
            "at": at,
            "rows": limit,
            "applied": list(_APPLIED),
            "until": until,
            "reasons": list(reasons),
        }
        rows = client.query(sql, parameters=params).result_rows
        rows.sort(key=lambda row: row[_STORED:])
        yield from rows
        if len(rows) < limit:
            return
        at = _utc(rows[-1][_STORED])
        # the next page sized from this one's commands (a query a page: small records, more)
        size = sum(len(row[9] or "") + 512 for row in rows) / len(rows)
        limit = max(MIN_PAGE_ROWS, min(MAX_PAGE_ROWS, int(PAGE_BYTES / size)))


def sealed_policy_records(client: Any, keys: list[bytes]) -> list[tuple[str, ...]] | None:
    """The policy records of the control log whose seal verifies under ``keys``, as
    ``restart_notice.fold_policy_in_force`` reads them (reason, version, operator, time, text):
    the applied updates, then the workers' records of the policy they decided under, each in
    the order of their sealed times (ties: as stored), so the last is the newest a worker made
    (an update's time is its publisher's clock: one dated a year ahead while no operators were
    listed, applied, stayed the last); None when no ``policy_in_force`` record is sealed (an
    audit from before the workers sealed them, or under another key).

    A worker seals the record of the policy it decides under at its start and at each update
    (processors/recorded.py): a writer of gov.decisions cannot add one, so a forged record
    whose document does not hash to its version no longer refuses every restart (its
    operators unknown), nor does one of another policy get named as the policy in force; a
    copy of a sealed record, re-dated, keeps its sealed time (session 42)."""
    from baton.schemas.events import parse_control_event
    from baton.schemas.policy_load import parse_policy
    from baton.sinks.schema import DATABASE

    if not client.command(f"EXISTS TABLE {DATABASE}.control_log"):
        return None
    found: list[tuple[bool, datetime, int, tuple[str, ...]]] = []
    seen: set[str] = set()  # the seals of the records kept: a copy says what they say
    for row in _pages(client, reasons=POLICY_RECORDS):
        if row[_BEFORE] or row[_SEAL] in seen or not _verified(keys, row):
            continue  # (200k re-sent copies of a sealed record were each kept and parsed)
        seen.add(row[_SEAL])
        reason, text, at = str(row[6]), str(row[9] or ""), _utc(row[8])
        if reason == "policy_in_force":
            version = str(row[1]).removeprefix("policy_in_force:")
        else:  # an applied update: the version it put in force
            try:
                event = parse_control_event(text.encode())
                version = parse_policy(event.policy_yaml, "policy_updated").version  # type: ignore[union-attr]
            except Exception:
                continue  # another Baton version's command: it names no version here
        when = at.strftime("%Y-%m-%d %H:%M:%S.%f")
        record = (reason, version, str(row[7] or ""), when, text)
        found.append((reason == "policy_in_force", at, len(found), record))
    if not any(worker for worker, *_ in found):
        return None
    return [record for *_, record in sorted(found, key=lambda f: f[:3])]


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
    if not sealed.unsealed_count:
        return
    names = ", ".join(shown_cut(r, 200) for r in sealed.unsealed[:3])
    more = " ..." if sealed.unsealed_count > 3 else ""
    say(
        f"restore: WARNING: {sealed.unsealed_count} command record(s) of the audit carry no "
        f"worker's seal ({names}{more}): forged into gov.decisions, sealed under another key "
        "(BATON_AUDIT_CHAIN_KEY, DATA_DIR/worker/seal.key), or recorded while the workers "
        "had none; NOT issued again (a kill among them is held; release or publish again "
        "what should be in force)"
    )


def audit_seal_keys(settings: Any, worker_dir: Path | None) -> list[bytes]:
    """The keys `baton audit verify` checks seals with: BATON_AUDIT_CHAIN_KEY, and the seal.key
    of the `baton up` stack's workers' dir ``worker_dir`` (``chain_keys.audit_worker_dir``: the
    one its chain key comes from) when readable."""
    from baton.processors.control_seal import chain_key, read_seal_key
    from baton.schemas.errors import ConfigError

    keys = [chain_key(settings)]
    # (another user's stack, or a damaged key: said as unchecked when no key is left)
    with suppress(ConfigError):
        keys.append(read_seal_key(worker_dir) if worker_dir else b"")
    return [k for k in keys if k]
