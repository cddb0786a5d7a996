"""The audit's kill and release records as a ``baton up`` restart reads them: each as its worker
made it, dated where no writer of gov.decisions can move it earlier.

A record whose row a forger replaced under its id, or whose command is not the one its request
id names, is a kill whose command is lost (:func:`baton.cli.restart_notice.lost_kill`), of the
scopes its request id or key columns name; every kill is dated no earlier than
``governance.kill_times`` (migration 0009) recorded it. ``cli.restore_kills`` decides from
these which switches the restart holds.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from baton.cli.restart_notice import APPLIED, as_made, lost_kill, replaced_control_ids

__all__ = ["kill_records", "sealed_kill_records"]


def kill_records(client: Any, sealed: Collection[str] = ()) -> list[tuple[float, tuple[str, ...]]]:
    """The audit's applied kill and release records, oldest first, as their workers made
    them (:func:`as_made`), each with its time (POSIX seconds); empty when there is no audit
    table yet. A kill or release whose stored row no longer reads as one (replaced in FINAL
    under its id by a row of another reason or phase: H2, session 36, the kill then not even
    named) counts as a kill whose command is lost, from ``decision_variants``, which keeps
    what every id once said; so does a kill whose recorded command is not the one its request
    id names (a copy of another command, or text that does not parse), and a kill's scope and
    target are its command's or its key columns', never its ``detail`` (a forger's text).

    A kill is dated no earlier than the latest time ``kill_times`` holds under its id (every
    kill record ever inserted, never replaced): the replacing row's time, and
    decision_variants', are a forger's to choose, and a lost kill dated before a re-issued
    release read as lifted by it (session 38, A2). ``sealed``: decision ids whose record a
    worker sealed, left out (the restart reads them from the control log: never lost)."""
    from baton.schemas.events import MAX_RECORDED_COMMAND_BYTES
    from baton.sinks.schema import DATABASE

    if not client.command(f"EXISTS TABLE {DATABASE}.decisions"):
        return []
    # a command longer than any event a worker reads is no worker's (it dead-letters one past
    # MAX_EVENT_BYTES): read as none, so a flood of forged megabyte rows is not held whole
    rows = client.query(
        "SELECT reason, run_id, tenant, detail, if(length(ifNull(input, '')) <= {most:UInt32}, "
        "ifNull(input, ''), ''), decision_id, "
        f"request_id, decided_at FROM {DATABASE}.decisions FINAL "
        "WHERE phase = 'control' AND reason IN {applied:Array(String)} "
        "ORDER BY decided_at, `offset`",
        parameters={"applied": list(APPLIED), "most": MAX_RECORDED_COMMAND_BYTES},
    ).result_rows
    rows = [row for row in rows if str(row[5]) not in sealed]
    dated = [(str(row[5]), _seconds(row[-1]), record) for row in rows
             for record in _kill_as_made(tuple(str(v) for v in row[:-1]))]  # fmt: skip
    listed = {(str(row[2]), str(row[1]), str(row[5])) for row in rows}
    for decision_id, run_id, tenant, _reason, at in replaced_control_ids(client, APPLIED):
        if (tenant, run_id, decision_id) not in listed and decision_id not in sealed:
            dated += [(decision_id, _seconds(at), lost) for lost in _lost_kills(run_id, tenant)]
    return _dated(client, dated)


def sealed_kill_records(
    client: Any, sealed: list[tuple[str, str, str, str, str, datetime]]
) -> list[tuple[float, tuple[str, ...]]]:
    """:func:`kill_records` of the sealed applied commands (``(decision_id, reason, run_id,
    tenant, command, stored at)``, the control log's first verified copies): each as its worker
    made it, its scope its command's (a seal vouches for the command and the key columns, not
    ``detail``), a kill dated by ``kill_times`` as any. A kill whose command no longer parses
    (another Baton version's) is a kill whose command is lost: held."""
    from baton.schemas.events import parse_control_event

    dated = []
    for decision_id, reason, run_id, tenant, command, stored in sealed:
        if reason not in ("kill_switch", "kill_switch_released"):
            continue
        try:
            scope = getattr(parse_control_event(command.encode()), "scope", "")
        except Exception:
            scope = ""
        records = [(reason, run_id, tenant, f"scope={scope}", command)] if scope else []
        if not scope and reason == "kill_switch":
            records = _lost_kills(run_id, tenant)
        dated += [(decision_id, _seconds(stored), record) for record in records]
    return _dated(client, dated)


def _dated(
    client: Any, dated: list[tuple[str, float, tuple[str, ...]]]
) -> list[tuple[float, tuple[str, ...]]]:
    """``(time, record)`` of ``(decision id, time, record)``, a kill's time no earlier than
    ``kill_times`` holds under its id, oldest first."""
    kills = [ident for ident, _, record in dated if record[0] == "kill_switch"]
    recorded = _kill_times(client, kills)
    out = [
        (max(at, recorded.get(ident, at)) if record[0] == "kill_switch" else at, record)
        for ident, at, record in dated
    ]
    out.sort(key=lambda pair: pair[0])
    return out


def _kill_as_made(row: tuple[str, ...]) -> list[tuple[str, ...]]:
    """:func:`as_made`, a kill's scope and target taken from its request id (which its id is
    made from), never its ``detail`` or the key columns alone; its command counted only when it
    is the one that request id names. A kill whose command is not (altered, another command's
    text copied under its id, none) is a kill whose command is lost (session 39: a forged row
    with the kill's id, a command that does not parse and ``detail`` naming another scope held
    nothing; a tenant's kill carrying a run id was held as that run's)."""
    from baton.schemas.decision import Phase, decision_id_for
    from baton.schemas.events import KillSwitch, parse_control_event

    record = as_made(row)
    reason, run_id, tenant, _detail, command, decision_id, request_id = row
    made = (
        reason == "kill_switch"
        and request_id.startswith("kill_switch:")
        and decision_id == decision_id_for(run_id, request_id, Phase.CONTROL)
    )
    if record[0] != "kill_switch":
        return [record]  # a release as its worker made it
    if not made:
        return _lost_kills(run_id, tenant)  # the key columns: every scope they name
    scope, _, rest = request_id.removeprefix("kill_switch:").partition(":")
    at = re.search(_COMMAND_TIME, rest)
    target = rest[: at.start() - 1] if at is not None and at.start() > 0 else ""
    if scope not in ("run", "tenant", "global") or (scope != "global" and not target):
        return _lost_kills(run_id, tenant)
    held = (
        "kill_switch",
        target if scope == "run" else "*",
        target if scope == "tenant" else "*",
        f"scope={scope}",
    )
    try:
        event = parse_control_event(command.encode()) if command else None
    except Exception:
        event = None
    if isinstance(event, KillSwitch):
        own = f"kill_switch:{event.scope}:{event.target}:{event.event_time.isoformat()}"
        if own == request_id:
            return [(*held, command)]
    return [(*held, "")]


def _lost_kills(run_id: str, tenant: str) -> list[tuple[str, ...]]:
    """:func:`~baton.cli.restart_notice.lost_kill` of each scope the key columns name: a
    run's and a tenant's when a row holds both (a tenant's kill may carry a run id: either
    could be the one lost)."""
    kills = [lost_kill(run_id, tenant)]
    if run_id != "*" and tenant != "*":
        kills.append(lost_kill("*", tenant))
    return kills


#: a kill's request id ends in its command's time (``kill_switch:SCOPE:TARGET:ISO``)
_COMMAND_TIME = r"(\d{4}-\d\d-\d\dT[0-9:.]+(?:[+-]\d\d:\d\d)?)$"


def _kill_times(client: Any, ids: list[str]) -> dict[str, float]:
    """The latest time ``kill_times`` recorded a kill under each of ``ids`` (POSIX seconds):
    when the sink stored it (``inserted_at``, its clock: no writer of gov.decisions sets it)
    or the time its command carries (the operator's clock, which a release's is compared
    with; bounded by the skew a worker accepts past the sink's time), whichever is later."""
    from baton.processors.engine_control import CONTROL_CLOCK_SKEW_S
    from baton.sinks.schema import DATABASE

    if not ids or not client.command(f"EXISTS TABLE {DATABASE}.kill_times"):
        return {}
    signed = (
        "least(ifNull(parseDateTime64BestEffortOrNull(extract(request_id, {pattern:String}), 6, "
        "'UTC'), toDateTime64(0, 6, 'UTC')), inserted_at + toIntervalSecond({skew:UInt32}))"
    )
    rows = client.query(
        f"SELECT decision_id, max(greatest(inserted_at, {signed})) FROM {DATABASE}.kill_times "
        "WHERE decision_id IN {ids:Array(String)} GROUP BY decision_id",
        parameters={
            "ids": sorted(set(ids)),
            "pattern": _COMMAND_TIME,
            "skew": int(CONTROL_CLOCK_SKEW_S),
        },
    ).result_rows
    return {str(ident): _seconds(at) for ident, at in rows}


def _seconds(at: datetime) -> float:
    """POSIX seconds of a time the audit returned (naive: UTC, as the columns are)."""
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()
