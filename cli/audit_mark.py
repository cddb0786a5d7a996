"""How much the audit held when its stack stopped: a later start finding less refuses.

``cli/up_audit.py`` tells a missing, replaced or table-less audit by its id and its tables. An
audit *emptied in place* (its data parts deleted, the tables' metadata kept) or an *older
backup of the same audit* (its id is the same) passed: the restart restored fewer runs, or
none, and the kill switches issued after the backup were gone (session 34, remaining). So at a
clean stop, once the sink is gone, ``baton up`` counts the audit's decisions by the UTC day
they were stored on (``inserted_at``, the sink's clock; ``FINAL`` within each partition, as
the table's merges fold copies: a merge never changes the count) and records the newest
:data:`MARK_DAYS` days in ``stack.json`` (``audit_rows``, with the table's retention). The
next start counts again before anything starts; a day that no row of can have expired by now
(stored less than the retention ago) holding fewer rows than recorded refuses the start, exit
2, like a lost audit (``--forget-audit`` goes on without it).

Nothing is stored between the stop and the next start, so the counts can only fall by the
retention's TTL (days past it are not compared) or by someone taking rows away. A stop that
was not clean (kill -9, power lost) records no counts: the next start checks the id and the
tables only. A start records none either (the sink writes from then on), except with
--no-audit, which writes nothing into the audit: it keeps the earlier counts for the next start
(a --no-audit start in between let an older copy through).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = ["MARK_DAYS", "audit_rows", "carried_over", "missing_rows", "stop_mark"]

#: the newest days a mark keeps (a record is ≤ 64 KB; older days are not compared)
MARK_DAYS = 400

#: ClickHouse shows ``TTL toDateTime(inserted_at) + toIntervalDay(7)``
_TTL_RE = re.compile(
    r"\bTTL\b[^\n]*?(?:toIntervalDay\((\d+)\)|INTERVAL\s+(\d+)\s+DAY)", re.IGNORECASE
)
_COUNT = (
    "SELECT toString(toDate(inserted_at, 'UTC')) AS day, count() FROM {db}.decisions FINAL "
    "GROUP BY day ORDER BY day DESC LIMIT {days} "
    "SETTINGS do_not_merge_across_partitions_select_final = 1"
)


def audit_rows(chdb: Path) -> tuple[dict[str, int], int] | None:
    """The audit in ``chdb``'s decisions by UTC day stored (newest :data:`MARK_DAYS`) and its
    retention in days; None when it holds no decisions table. Opens the directory and closes
    it again (``AuditUnavailable`` when it cannot be read)."""
    from baton.sinks.clickhouse import audit_errors, connect
    from baton.sinks.schema import DATABASE

    label = f"chdb://{chdb}"
    client = connect(label, follow_endpoint=False)
    try:
        with audit_errors(label, "counting the audit's decisions"):
            if not client.command(f"EXISTS TABLE {DATABASE}.decisions"):
                return None
            ddl = str(client.command(f"SHOW CREATE TABLE {DATABASE}.decisions"))
            result = client.query(_COUNT.format(db=DATABASE, days=MARK_DAYS))
            rows = {str(day): int(n) for day, n in result.result_rows}
    finally:
        client.close()
    return rows, _ttl_days(ddl)


def _ttl_days(ddl: str) -> int:
    """The retention in days of a decisions table's DDL; 1 when it cannot be read (fewer
    days are compared: never a refusal for rows the TTL took)."""
    found = _TTL_RE.search(ddl.replace("\\n", "\n"))
    return max(1, int(found.group(1) or found.group(2))) if found else 1


def missing_rows(
    marked: dict[str, int], ttl_days: int, found: dict[str, int], now: datetime | None = None
) -> str | None:
    """What ``found`` (the audit's counts now) lacks of ``marked`` (the counts at the last
    clean stop, under a retention of ``ttl_days``), for a refusal; None: nothing. Only days
    whose every row is younger than the retention are compared (the TTL may have taken the
    others)."""
    now = now or datetime.now(UTC)
    short: list[tuple[str, int, int]] = []
    for day, rows in sorted(marked.items()):
        try:
            start = datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC)
        except ValueError:
            continue  # the record's validator keeps these out
        if start + timedelta(days=ttl_days) <= now:
            continue  # some of its rows may have expired
        if found.get(day, 0) < rows:
            short.append((day, found.get(day, 0), rows))
    if not short:
        return None
    lost = sum(rows - now_ for _, now_, rows in short)
    day, now_, rows = short[-1]
    return (
        f"it holds {lost:,} fewer decisions than when its stack last stopped ({now_:,} of the "
        f"{rows:,} stored on {day}"
        + (f", and {len(short) - 1} more day(s) short" if len(short) > 1 else "")
        + "): an older copy of the audit, or rows deleted from it"
    )


def stop_mark(record: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """At a clean stop, the sink gone: the counts for ``record``'s audit (``mark_stopped``'s
    changes); none (said) when it cannot be counted, none with --no-audit or no tables."""
    from baton.cli.up_audit import has_tables
    from baton.schemas.errors import BatonError

    if record.clickhouse_dsn is None or record.audit_id is None:
        return {}
    chdb = record.data_dir / "chdb"
    if not has_tables(chdb):
        return {}
    try:
        counted = audit_rows(chdb)
    except BatonError as exc:
        say(
            f"WARNING: could not count the audit's decisions at this stop ({exc}): the next "
            "start cannot tell an older copy of the audit from this one"
        )
        return {}
    if counted is None:
        return {}
    rows, ttl_days = counted
    return {"audit_rows": rows, "audit_ttl_days": ttl_days}


def carried_over(earlier: Any, audit_id: str | None, no_audit: bool) -> dict[str, Any]:
    """What a start's new record keeps of ``earlier``'s when its audit is the same: that the
    audit was made, and with --no-audit (nothing is written into the audit) the counts of its
    last clean stop, for the next start to check."""
    if earlier is None or audit_id is None or earlier.audit_id != audit_id:
        return {}
    kept: dict[str, Any] = {"audit_made": True} if earlier.audit_made else {}
    if no_audit and earlier.audit_rows:
        kept |= {"audit_rows": earlier.audit_rows, "audit_ttl_days": earlier.audit_ttl_days}
    return kept
