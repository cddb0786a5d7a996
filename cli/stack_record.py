"""Where a client command finds its stack: the record ``baton up`` keeps in its data dir.

``baton up`` keeps ``<data-dir>/stack.json`` while it runs (``baton.cli.stack_file``).
Client commands call ``stack_settings`` (or ``audit_settings``) instead of
``build_settings``: it applies one order for each connection, Kafka (``bootstrap``) and the audit
(``clickhouse_dsn``), and the first that gives one wins:

1. the setting's own flag (``--bootstrap``, ``--dsn``);
2. ``--data-dir DIR`` on the command line: the stack recorded in DIR;
3. the setting's variable (``BATON_BOOTSTRAP``, ``BATON_CLICKHOUSE_DSN``);
4. ``BATON_DATA_DIR``: the stack recorded there;
5. ``./.baton``, ``baton up``'s default data dir: the stack recorded there.

Nothing found is a ``StackNotFound`` naming every place looked at and how to point at a
stack. A record whose ``baton up`` is gone without marking it stopped (killed, a crash) is
*stale*: Kafka commands refuse it, naming it; audit commands still read its audit directory
(the data is on disk) and say so on stderr.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from baton.cli.options import build_settings
from baton.cli.stack_file import STACK_FILE, StackRecord, read_record, record_path
from baton.schemas.env_names import DATA_DIR
from baton.schemas.errors import AuditUnavailable, BrokerUnavailable, ConfigError
from baton.schemas.settings import Settings
from baton.sinks.render import shown_cut

__all__ = [
    "DEFAULT_DATA_DIR",
    "FoundStack",
    "StackNotFound",
    "audit_settings",
    "data_dir_option",
    "find_stack",
    "is_default_data_dir",
    "stack_settings",
    "uses_stack",
]

#: ``baton up``'s data dir when none is given, relative to the current folder
DEFAULT_DATA_DIR = Path(".baton")

#: settings a command takes from the record along with the connection, unless it has them
#: (``decision_keys``: it takes only decisions the stack's workers signed; taken with
#: --data-dir whether or not its Kafka is given too)
_KAFKA_COMPANIONS = ("topic_prefix", "partitions", "app_id", "policy", "decision_keys")

F = TypeVar("F", bound=Callable[..., Any])


class StackNotFound(ConfigError):
    """No stack to connect to: no flag, no variable, no record (the message lists where)."""


# ---------------------------------------------------------------------- finding a stack
@dataclass(frozen=True)
class FoundStack:
    """The data dir a command uses, why that one, and its record (None: no record there)."""

    data_dir: Path
    source: str
    record: StackRecord | None


def _data_dirs(flag: Path | None, env: Mapping[str, str]) -> list[tuple[Path, str]]:
    """The data dirs to look in, in order, with where each came from."""
    if flag is not None:
        return [(flag, "--data-dir")]
    if env.get(DATA_DIR):
        return [(Path(env[DATA_DIR]), DATA_DIR)]
    return [(DEFAULT_DATA_DIR, "the current folder's .baton")]


def find_stack(data_dir: Path | None = None, env: Mapping[str, str] | None = None) -> FoundStack:
    """The stack of ``--data-dir`` (``data_dir``), else ``BATON_DATA_DIR``, else ``./.baton``;
    its record may be None (no ``baton up`` ever wrote one there)."""
    env = os.environ if env is None else env
    ((where, source),) = _data_dirs(data_dir, env)
    where = where.expanduser().resolve()
    return FoundStack(where, source, read_record(where))


def _not_found(found: FoundStack, wanted: str, setting: str, flag: str) -> StackNotFound:
    return StackNotFound(
        f"no Baton stack to reach for {wanted}: no {flag} given, {setting} is not set, and "
        f"{record_path(found.data_dir)} (from {found.source}) does not exist (`baton up` "
        f"writes it while it runs). Run this command in the folder where `baton up` runs, or "
        f"pass --data-dir DIR of a running `baton up` (env BATON_DATA_DIR), or {flag} "
        f"(env {setting})"
    )


def _kafka_from(found: FoundStack) -> StackRecord:
    """The record to take Kafka from: it exists and its ``baton up`` runs."""
    record = found.record
    assert record is not None
    path = record_path(found.data_dir)
    if record.state == "stopped":
        raise BrokerUnavailable(
            f"the stack recorded in {path} stopped at {record.stopped_at:%Y-%m-%d %H:%M:%S} UTC "
            f"({record.describe()}, Kafka was {record.bootstrap}); start it again with "
            f"`baton up --data-dir {found.data_dir}`, or pass --bootstrap"
        )
    if not record.live(found.data_dir):
        raise BrokerUnavailable(
            f"the stack record {path} is stale: {record.describe()} is not running (killed or "
            f"crashed without cleaning up; its Kafka {record.bootstrap} is gone with it). Start "
            f"`baton up --data-dir {found.data_dir}` again, or pass --bootstrap"
        )
    return record


def _audit_dsn_from(found: FoundStack, say: Callable[[str], None]) -> str:
    """The audit DSN of the stack found: its record's, or its chdb/ folder when it has no
    record (the audit outlives the stack)."""
    record, path = found.record, record_path(found.data_dir)
    chdb = found.data_dir / "chdb"
    if record is None:
        if chdb.is_dir():
            return f"chdb://{chdb}"
        raise StackNotFound(
            f"no Baton audit to query: no --dsn given, BATON_CLICKHOUSE_DSN is not set, and "
            f"neither {path} nor {chdb} (from {found.source}) exists (`baton up` writes them). "
            "Run this command in the folder where `baton up` runs, or pass --data-dir DIR of "
            "a `baton up` (env BATON_DATA_DIR), or --dsn (env BATON_CLICKHOUSE_DSN)"
        )
    if record.clickhouse_dsn is None:
        raise AuditUnavailable(
            f"the stack recorded in {path} ({record.describe()}) runs without its audit "
            "(--no-audit): there is nothing to query; pass --dsn for another audit"
        )
    live = record.live(found.data_dir)
    if record.state != "stopped" and not live:
        say(
            f"warning: the stack record {path} is stale ({record.describe()} is not running); "
            f"reading the audit it left in {found.data_dir / 'chdb'}"
        )
    elif live and record.sql_url is None:
        raise AuditUnavailable(
            f"the stack recorded in {path} ({record.describe()}) serves no SQL (--sql-port "
            "off) and holds its audit: query it after it stops, or start it with --sql-port 0"
        )
    # the audit of a `baton up` is always DATA_DIR/chdb: the record only says that there is
    # one, so a planted record cannot send queries (or their results) anywhere else
    return f"chdb://{chdb}"


def _warn(line: str) -> None:
    click.echo(f"baton: {line}", err=True)


def uses_stack(
    setting: str,
    opts: Mapping[str, Any],
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> bool:
    """The stack's record decides ``setting`` for a command given ``opts`` (no flag for it;
    --data-dir beats its variable, which counts in any case, as the settings read it)."""
    env = os.environ if env is None else env
    if opts.get(setting) is not None:
        return False
    name = f"BATON_{setting.upper()}"
    return data_dir is not None or not any(k.upper() == name and v for k, v in env.items())


def stack_settings(
    opts: Mapping[str, Any],
    data_dir: Path | None = None,
    *,
    kafka: bool = True,
    audit: bool = False,
    env: Mapping[str, str] | None = None,
    say: Callable[[str], None] = _warn,
) -> Settings:
    """Settings for a client command: ``opts`` (its options, None when not given) on top of
    the environment, and the connections it needs (``kafka``, ``audit``) that neither gives
    taken from its stack's record, in the module docstring's order."""
    env = os.environ if env is None else env
    given = {k: v for k, v in opts.items() if v is not None}
    # the settings model reads variables whatever their case (BATON_bootstrap too)
    variables = {k.upper() for k, v in env.items() if v}
    found: FoundStack | None = None
    from_stack = functools.partial(uses_stack, opts=opts, data_dir=data_dir, env=env)

    def stack() -> FoundStack:
        nonlocal found
        if found is None:
            found = find_stack(data_dir, env)
        return found

    if data_dir is None and env.get("BATON_DATA_DIR"):
        # a leftover variable beat the stack BATON_DATA_DIR names, and nothing said so: a kill
        # switch would go to the other cluster (session 29, H3)
        for setting, wanted in (("bootstrap", kafka), ("clickhouse_dsn", audit)):
            name = f"BATON_{setting.upper()}"
            if wanted and setting not in given and name in variables:
                say(
                    f"warning: {name} is set: it is used, not the `baton up` stack of "
                    f"BATON_DATA_DIR ({shown_cut(env['BATON_DATA_DIR'], 120)}); a variable "
                    "beats BATON_DATA_DIR, --data-dir beats both"
                )
    record: StackRecord | None = None
    companions: tuple[str, ...] = ()
    if kafka and from_stack("bootstrap"):
        if stack().record is None:
            raise _not_found(stack(), "Kafka", "BATON_BOOTSTRAP", "--bootstrap")
        record = _kafka_from(stack())
        given["bootstrap"] = record.bootstrap
        companions = _KAFKA_COMPANIONS
    elif kafka and data_dir is not None:
        # a stack named by --data-dir, its Kafka by --bootstrap: its workers' key checks what
        # they answer (dropped, `baton kill --data-dir S --bootstrap ...` took a forged
        # "applied" record: session 43, F4)
        record, companions = stack().record, ("decision_keys",)
    for name in companions if record is not None else ():
        if name not in given and f"BATON_{name.upper()}" not in variables:
            value = getattr(record, name)
            if value is not None:
                given[name] = value
    if audit and from_stack("clickhouse_dsn"):
        given["clickhouse_dsn"] = _audit_dsn_from(stack(), say)
    return build_settings(**given)


def audit_settings(
    clickhouse_dsn: str | None, data_dir: Path | None, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings of a command that only queries the audit (``baton sql``, ``trace`` ...)."""
    return stack_settings(
        {"clickhouse_dsn": clickhouse_dsn}, data_dir, kafka=False, audit=True, env=env
    )


def data_dir_option(fn: F) -> F:
    """``--data-dir DIR``: the ``baton up`` whose recorded stack the command uses."""
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="the data dir of the `baton up` to use: its Kafka, SQL endpoint and policy come "
        f"from DIR/{STACK_FILE}, written while it runs (the audit from DIR/chdb also after "
        "it stopped). Order: --bootstrap/--dsn, then --data-dir, then BATON_BOOTSTRAP/"
        "BATON_CLICKHOUSE_DSN, then BATON_DATA_DIR, then ./.baton [env BATON_DATA_DIR]",
    )(fn)


def is_default_data_dir(path: Path) -> bool:
    """``path`` is the current folder's ``.baton`` (commands here find it with no flag)."""
    try:
        return path.resolve() == DEFAULT_DATA_DIR.resolve()
    except OSError:
        return False
