"""How much the audit held when its stack stopped: a later start finding less refuses.

``cli/up_audit.py`` tells a missing, replaced or table-less audit by its id and its tables. An
audit *emptied in place* (its data parts deleted, the tables' metadata kept) or an *older
backup of the same audit* (its id is the same) passed: the restart restored fewer runs, or
none, and the kill switches issued after the backup were gone (session 34, remaining). So at a
clean stop, once the sink is gone, ``baton up`` counts the audit's decisions by the UTC day
they were stored (``inserted_at``, the sink's clock; ``FINAL`` within each partition, as the
table's merges fold copies) and notes the ids of its operators' commands (kill switches,
releases, policy updates; the newest :data:`MARK_COMMANDS`). That mark goes into
``stack.json`` and, keyed by the audit's id, into ``~/.local/state/baton/audits/`` (outside the
data dir: a backup of the whole data dir carries an older ``stack.json``, H1 session 35).

The next start counts again before anything starts and refuses (exit 2, ``--forget-audit``
goes on) when, for a day no row of which can have expired (stored less than the retention
ago), fewer decisions were stored *on or after* it than the mark says, or a noted command is
not there. Sums from a day on, not a day's count: a row stored again later (FINAL keeps the
newest copy) moves to a newer day, which no sum from a day on sees as fewer (a day's count
did: a false refusal), so a mark stays a lower bound while the stack runs and is carried
over at every start: a start that then crashes (no clean stop, no new mark) still has the
last one. A copy of the same audit that went on elsewhere (more rows, not these) lacks the
commands noted. Days older than the newest :data:`MARK_DAYS` are summed by month.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "MARK_COMMANDS",
    "MARK_DAYS",
    "AuditCount",
    "AuditMark",
    "carried_over",
    "count_audit",
    "kept_mark",
    "mark_path",
    "missing",
    "packed",
    "stop_mark",
]

#: the newest days a mark keeps one by one; older ones are summed by month
MARK_DAYS = 400
#: days and months in a mark (a retention of 20,000 days is ~660 months)
MARK_ENTRIES = 1_200
#: the operators' commands whose ids a mark notes (the newest)
MARK_COMMANDS = 300
#: how long a start or stop waits for a chDB directory another process holds (after a kill -9
#: of `baton up` its sink drains up to 20 s towards a broker that is gone before it lets go)
LOCK_WAIT_S = 30.0

#: ClickHouse shows ``TTL toDateTime(inserted_at) + toIntervalDay(7)``
_TTL_RE = re.compile(
    r"\bTTL\b[^\n]*?(?:toIntervalDay\((\d+)\)|INTERVAL\s+(\d+)\s+DAY)", re.IGNORECASE
)
_DAYS = (
    "SELECT toString(toDate(inserted_at, 'UTC')) AS day, count() FROM {db}.decisions FINAL "
    "GROUP BY day SETTINGS do_not_merge_across_partitions_select_final = 1"
)
_COMMANDS = (
    "SELECT decision_id, toString(toDate(max(inserted_at), 'UTC')) AS day FROM {db}.decisions "
    "WHERE phase = 'control' AND ({prefixes}) GROUP BY decision_id "
    "ORDER BY max(inserted_at) DESC LIMIT {n}"
)
_PRESENT = (
    "SELECT DISTINCT decision_id FROM {db}.decisions WHERE decision_id IN {{ids:Array(String)}}"
)


class AuditMark(BaseModel):
    """What a clean stop found in an audit: its decisions by UTC day stored (at most
    :data:`MARK_ENTRIES` days and months), the table's retention, its operators' newest
    command ids with their day. In ``stack.json`` and the file outside the data dir."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    rows: dict[str, int]
    ttl_days: int = Field(ge=1, le=20_000)
    commands: dict[str, str] = Field(default_factory=dict)
    stopped_at: datetime | None = None

    @field_validator("rows")
    @classmethod
    def _rows(cls, value: dict[str, int]) -> dict[str, int]:
        if len(value) > MARK_ENTRIES:
            raise ValueError(f"at most {MARK_ENTRIES} days")
        for day, rows in value.items():
            date.fromisoformat(day)  # a ValueError names it
            if not 0 <= rows < 2**63:
                raise ValueError(f"{day}: a count from 0 to 2**63 - 1, got {rows}")
        return value

    @field_validator("commands")
    @classmethod
    def _commands(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MARK_COMMANDS:
            raise ValueError(f"at most {MARK_COMMANDS} commands")
        for ident, day in value.items():
            if not 0 < len(ident) <= 256:
                raise ValueError("a command's decision id of 1 to 256 characters")
            date.fromisoformat(day)
        return value


@dataclass(frozen=True)
class AuditCount:
    """An audit's decisions by UTC day stored (every day), its retention, its newest
    commands (id -> day) and which of the ids asked for it holds."""

    rows: dict[str, int]
    ttl_days: int
    commands: dict[str, str]
    present: frozenset[str]


def count_audit(
    chdb: Path, look_up: Iterable[str] = (), wait_s: float = LOCK_WAIT_S
) -> AuditCount | None:
    """Count the audit in ``chdb`` (None: it holds no decisions table). Opens the directory
    and closes it again, waiting up to ``wait_s`` for another process to let it go
    (``AuditUnavailable`` past that, or when it cannot be read)."""
    from baton.schemas.errors import AuditUnavailable
    from baton.sinks.clickhouse import audit_errors, connect
    from baton.sinks.rows import COMMAND_PREFIXES
    from baton.sinks.schema import DATABASE

    label = f"chdb://{chdb}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client = connect(label, follow_endpoint=False)
            break
        except AuditUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    prefixes = " OR ".join(f"startsWith(request_id, '{p}')" for p in COMMAND_PREFIXES)
    try:
        with audit_errors(label, "counting the audit's decisions"):
            if not client.command(f"EXISTS TABLE {DATABASE}.decisions"):
                return None
            ddl = str(client.command(f"SHOW CREATE TABLE {DATABASE}.decisions"))
            days = client.query(_DAYS.format(db=DATABASE)).result_rows
            query = _COMMANDS.format(db=DATABASE, prefixes=prefixes, n=MARK_COMMANDS)
            commands = client.query(query).result_rows
            ids = sorted(set(look_up))
            present = (
                client.query(_PRESENT.format(db=DATABASE), parameters={"ids": ids}).result_rows
                if ids
                else []
            )
    finally:
        client.close()
    return AuditCount(
        {str(day): int(n) for day, n in days},
        _ttl_days(ddl),
        {str(ident): str(day) for ident, day in commands},
        frozenset(str(row[0]) for row in present),
    )


def _ttl_days(ddl: str) -> int:
    """The retention in days of a decisions table's DDL; 1 when it cannot be read (fewer
    days are compared: never a refusal for rows the TTL took)."""
    found = _TTL_RE.search(ddl.replace("\\n", "\n"))
    return min(20_000, max(1, int(found.group(1) or found.group(2)))) if found else 1


def packed(rows: dict[str, int]) -> dict[str, int]:
    """``rows`` (day -> count) as a mark keeps them: the newest :data:`MARK_DAYS` days one by
    one, the older ones summed by month under the month's first day."""
    days = sorted(rows, reverse=True)
    kept = {day: rows[day] for day in days[:MARK_DAYS]}
    for day in days[MARK_DAYS:]:
        month = day[:8] + "01"
        kept[month] = kept.get(month, 0) + rows[day]
    return kept


def missing(mark: AuditMark, found: AuditCount, now: datetime | None = None) -> str | None:
    """What ``found`` (the audit now) lacks of ``mark``, for a refusal; None: nothing. Only
    sums from a day whose every row is younger than the retention (the smaller of the
    mark's and the table's now) are compared, and only commands of such days."""
    now = now or datetime.now(UTC)
    ttl = timedelta(days=min(mark.ttl_days, found.ttl_days))

    def comparable(day: str) -> bool:
        return datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC) + ttl > now

    for start in sorted(d for d in mark.rows if comparable(d)):  # the widest sum first
        marked = sum(n for d, n in mark.rows.items() if d >= start)
        held = sum(n for d, n in found.rows.items() if d >= start)
        if held < marked:
            return (
                f"it holds {marked - held:,} fewer decisions stored since {start} than when "
                f"its stack last stopped ({held:,} of {marked:,}): an older copy of the audit, "
                "or rows deleted from it"
            )
    gone = sorted(i for i, day in mark.commands.items() if comparable(day))
    gone = [i for i in gone if i not in found.present]
    if gone:
        return (
            f"{len(gone)} operator command(s) it held when its stack last stopped are not in "
            f"it (first: {gone[0][:80]}): another copy of the audit that went on without them, "
            "or rows deleted from it"
        )
    return None


def mark_path(audit_id: str) -> Path:
    """Where a mark of audit ``audit_id`` is kept outside its data dir."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "baton" / "audits" / f"{audit_id}.json"


def kept_mark(audit_id: str) -> AuditMark | None:
    """The mark kept outside the data dir for ``audit_id`` (None: none, or not readable)."""
    from baton.schemas.files import FileProblem, read_small_file

    try:
        data = read_small_file(mark_path(audit_id), 256 * 1024, mine=True)
        return AuditMark.model_validate_json(data)
    except (OSError, FileProblem, ValidationError, ValueError):
        return None


def stop_mark(record: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """At a clean stop, the sink gone: the mark of ``record``'s audit (``mark_stopped``'s
    changes), also kept outside the data dir; none (said) when it cannot be counted, none
    with --no-audit or no tables (then the carried one stays)."""
    from baton.cli.up_audit import has_tables
    from baton.schemas.errors import BatonError
    from baton.schemas.files import replace_file

    if record.clickhouse_dsn is None or record.audit_id is None:
        return {}
    chdb = record.data_dir / "chdb"
    if not has_tables(chdb):
        return {}
    try:
        counted = count_audit(chdb)
    except BatonError as exc:
        say(
            f"WARNING: could not count the audit's decisions at this stop ({exc}): the next "
            "start compares the audit with the last mark it has"
        )
        return {}
    if counted is None:
        return {}
    mark = AuditMark(
        rows=packed(counted.rows),
        ttl_days=counted.ttl_days,
        commands=counted.commands,
        stopped_at=datetime.now(UTC),
    )
    path = mark_path(record.audit_id)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        replace_file(path, mark.model_dump_json() + "\n", 0o600)
    except OSError as exc:
        say(
            f"WARNING: could not keep the audit's mark in {path} ({exc.strerror or exc}): "
            "a backup of the whole data dir would not be told from this audit"
        )
    return {"audit_mark": mark}


def carried_over(earlier: Any, audit_id: str | None) -> dict[str, Any]:
    """What a start's new record keeps of ``earlier``'s when its audit is the same: that the
    audit was made, and its last mark (a lower bound while the audit grows, and nothing is
    written into it with --no-audit: a start that crashes still has it)."""
    if earlier is None or audit_id is None or earlier.audit_id != audit_id:
        return {}
    kept: dict[str, Any] = {"audit_made": True} if earlier.audit_made else {}
    if earlier.audit_mark is not None:
        kept["audit_mark"] = earlier.audit_mark
    return kept
