"""The audit schema in ClickHouse: versioned SQL migrations, applied idempotently at start-up.

Migrations are ``migrations/NNNN_name.sql`` in this package, applied in order and recorded in
``governance.schema_migrations`` (version, name, checksum). They are immutable once released:
change the schema with a new file. Every statement is written to be re-runnable
(``IF NOT EXISTS``), so a process that died half-way through a migration, or two processes
starting at once, converge on the same schema.

The retention (``audit_ttl_days``) is a setting, not a migration: migrations create the
tables with the configured TTL, and :func:`migrate` changes the TTL of existing tables when the
setting changes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from clickhouse_connect.driver.client import Client

from baton.schemas.errors import ConfigError

__all__ = [
    "DATABASE",
    "MIGRATIONS_TABLE",
    "TTL_TABLES",
    "Migration",
    "applied_migrations",
    "load_migrations",
    "migrate",
]

DATABASE = "governance"
MIGRATIONS_TABLE = f"{DATABASE}.schema_migrations"

#: tables with a retention TTL, and the time column it counts from
TTL_TABLES: dict[str, str] = {
    "decisions": "toDateTime(event_time)",
    "rejected": "toDateTime(inserted_at)",
    "stops_per_minute_state": "minute",
    "run_summary_state": "toDateTime(last_at)",
    "approval_latency_state": "toDateTime(last_at)",
}

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# a statement ends with ';' at the end of a line (so a ';' inside a comment is fine)
_STATEMENT_END_RE = re.compile(r";[ \t]*(?:\n|$)")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str  # template: ``{ttl_days}`` is replaced when applied

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
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
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
    if ttl_days < 1:
        raise ConfigError(f"audit_ttl_days (BATON_AUDIT_TTL_DAYS): must be >= 1, got {ttl_days}")
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
