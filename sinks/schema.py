"""The audit schema in ClickHouse: versioned SQL migrations, applied idempotently at start-up.

Migrations are ``migrations/NNNN_name.sql`` in this package, applied in order and recorded in
``governance.schema_migrations`` (version, name, checksum). They are immutable once released:
change the schema with a new file. Every statement is written to be re-runnable
(``IF NOT EXISTS``), so a process that died half-way through a migration, or two processes
starting at once, converge on the same schema.

Some steps cannot be said idempotently in SQL (moving a table's rows to a new partition key
takes an EXCHANGE, which a re-run would undo): such a migration has a Python *procedure*, run
after its statements and before it is recorded, that looks at the tables to see how far it got
(``move_decisions_to_decided_at`` for 0003).

The retention (``audit_ttl_days``) is a setting, not a migration: migrations create the
tables with the configured TTL, and :func:`migrate` changes the TTL of existing tables when the
setting changes.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

from baton.schemas.errors import ConfigError

#: the longest audit retention: ClickHouse evaluates ``inserted_at + INTERVAL n DAY`` of a TTL
#: as a DateTime (last second 2106-02-07); past it the date wraps into the past and every
#: row expires as it is inserted (36,500 days kept nothing). 20,000 days (~54 years) holds
#: for rows decided until 2051
MAX_AUDIT_TTL_DAYS = 20_000


if TYPE_CHECKING:  # the driver's import costs 57-190 ms a replay --jobs process
    from clickhouse_connect.driver.client import Client

__all__ = [
    "DATABASE",
    "MAX_AUDIT_TTL_DAYS",
    "MIGRATIONS_TABLE",
    "TTL_TABLES",
    "Migration",
    "applied_migrations",
    "load_migrations",
    "migrate",
    "move_decisions_to_decided_at",
]

log = logging.getLogger(__name__)

DATABASE = "governance"
MIGRATIONS_TABLE = f"{DATABASE}.schema_migrations"

#: tables with a retention TTL, and the time column it counts from. The audit's rows count
#: from ``inserted_at``, the sink's clock: on ``decided_at`` (any writer of gov.decisions sets
#: it, within the sink's window), a forged record dated at the retention's edge expired
#: seconds after it was stored, taking its decision_variants row (the trace of a forged
#: allow) with it, and a forged copy in the worker's row's month replaced that row in a merge
#: and then expired (tests/unit/test_attacks_session17_h3_audit.py)
TTL_TABLES: dict[str, str] = {
    "decisions": "toDateTime(inserted_at)",
    "decision_variants": "toDateTime(inserted_at)",
    "rejected": "toDateTime(inserted_at)",
    "stops_per_minute_state": "minute",
    "run_summary_state": "toDateTime(last_at)",
    "approval_resolution_state": "toDateTime(last_at)",
    "kill_times": "toDateTime(inserted_at)",
    "control_log": "toDateTime(inserted_at)",
}

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# a statement ends with ';' at the end of a line (so a ';' inside a comment is fine)
_STATEMENT_END_RE = re.compile(r";[ \t]*(?:\n|$)")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str  # template: ``{ttl_days}`` is replaced when applied
    #: run after the statements (see the module docstring); must be safe to run again
    procedure: Callable[[Client, int], None] | None = field(default=None, compare=False)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def statements(self, ttl_days: int) -> list[str]:
        text = self.sql.replace("{ttl_days}", str(int(ttl_days)))
        chunks = _STATEMENT_END_RE.split(text)
        return [chunk.strip() for chunk in chunks if _has_code(chunk)]


def _has_code(chunk: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in chunk.splitlines())


def load_migrations() -> list[Migration]:
    """All migrations shipped in the package, ordered by version."""
    found: list[Migration] = []
    folder = resources.files("baton.sinks").joinpath("migrations")
    for entry in folder.iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            version, name = int(match[1]), match[2]
            sql = entry.read_text(encoding="utf-8")
            found.append(Migration(version, name, sql, _PROCEDURES.get(f"{version:04d}_{name}")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ConfigError(f"baton.sinks migrations: duplicate version numbers in {versions}")
    return found


def applied_migrations(client: Client) -> dict[int, str]:
    """version -> checksum of the migrations recorded in ``governance.schema_migrations``."""
    rows = client.query(
        f"SELECT version, argMax(checksum, applied_at) FROM {MIGRATIONS_TABLE} GROUP BY version"
    ).result_rows
    return {int(version): str(checksum) for version, checksum in rows}


def migrate(client: Client, ttl_days: int, migrations: list[Migration] | None = None) -> list[int]:
    """Bring the audit schema up to date; returns the versions applied now (empty if none).

    Raises ConfigError when an applied migration's file changed (migrations are immutable).
    """
    if not 1 <= ttl_days <= MAX_AUDIT_TTL_DAYS:
        raise ConfigError(
            f"audit_ttl_days (BATON_AUDIT_TTL_DAYS): must be from 1 to {MAX_AUDIT_TTL_DAYS:,} "
            f"(a ClickHouse TTL past 2106 wraps and drops every row), got {ttl_days}"
        )
    client.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    client.command(
        f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
        (version UInt32, name String, checksum String, applied_at DateTime64(6, 'UTC'))
        ENGINE = ReplacingMergeTree(applied_at) ORDER BY version"""
    )
    todo = migrations if migrations is not None else load_migrations()
    done = applied_migrations(client)
    applied_now: list[int] = []
    for migration in todo:
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                raise ConfigError(
                    f"audit schema migration {migration.version:04d}_{migration.name}.sql was "
                    f"applied with checksum {done[migration.version]}, the file now has "
                    f"{migration.checksum}: released migrations are immutable, add a new one"
                )
            continue
        for statement in migration.statements(ttl_days):
            client.command(statement)
        if migration.procedure is not None:
            migration.procedure(client, ttl_days)
        # recorded after all its statements: a crash in between re-runs them (IF NOT EXISTS)
        client.command(
            f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum, applied_at) "
            "VALUES ({v:UInt32}, {n:String}, {c:String}, now64(6))",
            parameters={"v": migration.version, "n": migration.name, "c": migration.checksum},
        )
        applied_now.append(migration.version)
    set_retention(client, ttl_days)
    return applied_now


def set_retention(client: Client, ttl_days: int) -> list[str]:
    """Make every audit table's TTL ``ttl_days``; returns the tables changed now."""
    rows = client.query(
        "SELECT name, create_table_query FROM system.tables WHERE database = {db:String}",
        parameters={"db": DATABASE},
    ).result_rows
    ddl = {str(name): str(query) for name, query in rows}
    changed: list[str] = []
    for table, column in TTL_TABLES.items():
        if table not in ddl:
            continue
        wanted = f"{column} + toIntervalDay({int(ttl_days)})"
        if wanted in ddl[table]:
            continue
        client.command(
            f"ALTER TABLE {DATABASE}.{table} MODIFY TTL {column} + INTERVAL {int(ttl_days)} DAY"
        )
        changed.append(table)
    return changed


_NEW_KEY = "toYYYYMM(decided_at)"
_STAGED = f"{DATABASE}.decisions_0003"
_KEPT = f"{DATABASE}.decisions_before_0003"
#: identifies one stored copy (a decision read at one offset)
_COPY = "cityHash64(decision_id, audit_topic, audit_partition, audit_offset)"


def move_decisions_to_decided_at(client: Client, ttl_days: int) -> None:
    """Migration 0003's step: governance.decisions' rows into the layout partitioned by
    ``decided_at`` (created empty as governance.decisions_0003 by the migration's SQL).

    Safe to re-run after a crash at any point; the partition keys say how far it got:
    decisions still on the old key -> (re)copy into the staged table and EXCHANGE the two;
    the staged table on the old key -> it is the old table: copy what it has that the new one
    lacks (rows inserted during the copy), then drop it once every row still in retention is
    in the new table, or keep it as governance.decisions_before_0003 and log why. Rows whose
    ``decided_at`` is older than the retention are expired by the new TTL, as they would be
    from now on.
    """
    if _partition_key(client, "decisions") != _NEW_KEY:
        client.command(f"TRUNCATE TABLE {_STAGED}")
        client.command(
            f"INSERT INTO {_STAGED} SELECT * FROM {DATABASE}.decisions",
            # old rows may span any number of months; only the sink's inserts are bounded
            settings={"max_partitions_per_insert_block": 0},
        )
        client.command(f"EXCHANGE TABLES {DATABASE}.decisions AND {_STAGED}")
    staged_key = _partition_key(client, "decisions_0003")
    if staged_key is None:
        return
    if staged_key == _NEW_KEY:  # re-created empty by a re-run of the SQL: nothing in it
        client.command(f"DROP TABLE {_STAGED}")
        return
    absent = f"{_COPY} NOT IN (SELECT {_COPY} FROM {DATABASE}.decisions)"
    client.command(
        f"INSERT INTO {DATABASE}.decisions SELECT * FROM {_STAGED} WHERE {absent}",
        settings={"max_partitions_per_insert_block": 0},
    )
    missing = int(
        client.command(
            f"SELECT count() FROM {_STAGED} WHERE {absent} "
            f"AND decided_at >= now64(6) - INTERVAL {int(ttl_days)} DAY"
        )
    )
    if missing == 0:
        client.command(f"DROP TABLE {_STAGED}")
        return
    client.command(f"RENAME TABLE {_STAGED} TO {_KEPT}")
    log.warning(
        "audit schema 0003: %d rows of the old governance.decisions (partitioned by "
        "event_time) did not reach the new table (their decided_at cannot be stored: before "
        "1970 or after 2106?); the old table is kept as %s: inspect it, then DROP it",
        missing,
        _KEPT,
    )


def _partition_key(client: Client, table: str) -> str | None:
    rows = client.query(
        "SELECT partition_key FROM system.tables WHERE database = {db:String} "
        "AND name = {t:String}",
        parameters={"db": DATABASE, "t": table},
    ).result_rows
    return str(rows[0][0]) if rows else None


_PROCEDURES: dict[str, Callable[[Client, int], None]] = {
    "0003_decisions_by_decided_at": move_decisions_to_decided_at,
}
