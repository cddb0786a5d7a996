"""Where a client command finds its stack: the record ``baton up`` keeps in its data dir.

``baton up`` writes ``<data-dir>/stack.json`` (``write_record``, atomically) when its broker
is up, updates it when it is ready or a child restarts, and marks it stopped on a clean exit.
Client commands call ``stack_settings`` (or ``audit_settings``) instead of ``build_settings``:
it applies one order for each connection, Kafka (``bootstrap``) and the audit
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

import fcntl
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from baton.cli.options import build_settings
from baton.schemas.errors import AuditUnavailable, BrokerUnavailable, ConfigError
from baton.schemas.settings import Settings

__all__ = [
    "DEFAULT_DATA_DIR",
    "STACK_FILE",
    "FoundStack",
    "StackNotFound",
    "StackRecord",
    "audit_settings",
    "data_dir_option",
    "find_stack",
    "is_default_data_dir",
    "mark_stopped",
    "read_record",
    "record_path",
    "refuse_running_stack",
    "stack_settings",
    "update_record",
    "write_record",
]

#: ``baton up``'s data dir when none is given, relative to the current folder
DEFAULT_DATA_DIR = Path(".baton")
STACK_FILE = "stack.json"
#: held (flock) by the `baton up` of the data dir for as long as it runs
LOCK_FILE = "stack.lock"
#: a record is a few hundred bytes; anything bigger is not one
_MAX_RECORD_BYTES = 64 * 1024

#: settings a command takes from the record along with the connection, unless it has them
_KAFKA_COMPANIONS = ("topic_prefix", "partitions", "app_id", "policy")

F = TypeVar("F", bound=Callable[..., Any])


class StackNotFound(ConfigError):
    """No stack to connect to: no flag, no variable, no record (the message lists where)."""


class StackRecord(BaseModel):
    """What ``<data-dir>/stack.json`` holds about one ``baton up`` (no secrets: the SQL
    endpoint's token stays in its own 0600 file, which ``connect`` follows)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    format: Literal[1] = 1
    state: Literal["starting", "running", "stopped"]
    pid: int = Field(gt=0, lt=2**31)
    started_at: datetime
    stopped_at: datetime | None = None
    data_dir: Path
    app_id: str = Field(max_length=256)
    bootstrap: str = Field(max_length=1024)
    topic_prefix: str = Field("", max_length=256)
    partitions: int = Field(ge=1, le=100_000)
    policy: Path | None = None
    #: ``chdb:///abs/dir`` of the audit, None with --no-audit
    clickhouse_dsn: str | None = Field(None, max_length=4096)
    #: ``http://127.0.0.1:PORT`` of the SQL endpoint (token not included), None when off
    sql_url: str | None = Field(None, max_length=1024)
    metrics_url: str | None = Field(None, max_length=1024)
    logs: dict[str, Path] = Field(default_factory=dict)
    pids: dict[str, int] = Field(default_factory=dict)

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        from baton.streams.net import parse_bootstrap

        parse_bootstrap(value)  # a ConfigError naming the entry
        return value

    def live(self, data_dir: Path | None = None) -> bool:
        """Its ``baton up`` still runs: the pid is alive, is a ``baton up``, and holds the
        lock of ``data_dir`` (where the record was found; its own ``data_dir`` by default),
        so neither a reused pid nor a record copied or planted elsewhere passes for it."""
        return (
            self.state != "stopped"
            and _is_baton_up(self.pid)
            and _lock_held(data_dir or self.data_dir)
        )

    def describe(self) -> str:
        """``baton up pid N (started T)`` for messages."""
        return f"baton up pid {self.pid} (started {self.started_at:%Y-%m-%d %H:%M:%S} UTC)"


def _is_baton_up(pid: int) -> bool:
    """``pid`` runs and, where /proc tells, runs ``baton ... up`` (a reused pid does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, its command line is not ours to read
    except OverflowError:
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): the pid is alive, trust it
    return b"up" in args and any(b"baton" in a for a in args)


def _lock_held(data_dir: Path) -> bool:
    """Some process holds ``data_dir``'s stack lock (a running ``baton up`` does)."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


#: the stack lock this process holds (``baton up``), open until it exits
_held_locks: list[int] = []


def _take_lock(data_dir: Path) -> bool:
    """Take ``data_dir``'s stack lock for the life of this process; False when another
    process holds it."""
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(
            f"the data dir {data_dir} is a file, not a directory; expected a directory "
            "(--data-dir, env BATON_DATA_DIR) that baton up may create and write"
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot lock the data dir {data_dir} ({LOCK_FILE}): {exc.strerror or exc}; "
            "expected a writable directory (--data-dir)"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _held_locks.append(fd)
    return True


def record_path(data_dir: Path) -> Path:
    return data_dir / STACK_FILE


def write_record(record: StackRecord) -> Path:
    """Write ``record`` into its data dir atomically (a reader sees the old or the new one)."""
    path = record_path(record.data_dir)
    temp = path.with_name(f".{STACK_FILE}.{os.getpid()}.tmp")
    text = record.model_dump_json(indent=2) + "\n"
    try:
        # never through a link someone left at the temp name
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the stack record {path}: {exc.strerror or exc}; expected a "
            "writable data dir (--data-dir)"
        ) from None
    return path


def mark_stopped(record: StackRecord) -> StackRecord:
    """Record that ``record``'s stack stopped cleanly, unless another stack took the dir."""
    current = read_record(record.data_dir)
    if current is not None and current.pid != record.pid:
        return current
    stopped = record.model_copy(update={"state": "stopped", "stopped_at": datetime.now(UTC)})
    write_record(stopped)
    return stopped


def read_record(data_dir: Path) -> StackRecord | None:
    """The record in ``data_dir``, None when there is none; ``ConfigError`` naming the file
    when it is not a record (not a regular file, too big, not the format)."""
    path = record_path(data_dir)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"stack record {path}: cannot read it: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"stack record {path}: not a regular file, expected `baton up`'s JSON")
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_RECORD_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"stack record {path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > _MAX_RECORD_BYTES:
        raise ConfigError(
            f"stack record {path}: over {_MAX_RECORD_BYTES} bytes, expected `baton up`'s "
            "JSON of a few hundred"
        )
    try:
        return StackRecord.model_validate_json(data)
    except ValidationError as exc:
        problem = "; ".join(_validation_problem(e) for e in exc.errors())
    except ConfigError as exc:  # the bootstrap check names the entry
        problem = str(exc)
    raise ConfigError(
        f"stack record {path}: not a `baton up` record ({problem[:500]}); delete it and "
        "start `baton up` again, or point at the stack with --bootstrap / --dsn"
    )


def _validation_problem(error: Any) -> str:
    """``field: message``, or only the message when it concerns the whole file."""
    where = ".".join(map(str, error["loc"]))
    return f"{where}: {error['msg']}" if where else str(error["msg"])


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
    if env.get("BATON_DATA_DIR"):
        return [(Path(env["BATON_DATA_DIR"]), "BATON_DATA_DIR")]
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

    def stack() -> FoundStack:
        nonlocal found
        if found is None:
            found = find_stack(data_dir, env)
        return found

    def from_stack(setting: str) -> bool:
        """The stack decides this connection (no flag; --data-dir beats the variable)."""
        if setting in given:
            return False
        return data_dir is not None or f"BATON_{setting.upper()}" not in variables

    if kafka and from_stack("bootstrap"):
        if stack().record is None:
            raise _not_found(stack(), "Kafka", "BATON_BOOTSTRAP", "--bootstrap")
        record = _kafka_from(stack())
        given["bootstrap"] = record.bootstrap
        for name in _KAFKA_COMPANIONS:
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


def update_record(record: StackRecord, **changes: Any) -> StackRecord:
    """``record`` with ``changes``, written when they change anything."""
    updated = record.model_copy(update=changes)
    if updated != record:
        write_record(updated)
    return updated


def refuse_running_stack(data_dir: Path) -> StackRecord | None:
    """Before ``baton up`` starts in ``data_dir``: take its stack lock for the life of this
    process, or raise a ``ConfigError`` naming the ``baton up`` that holds it; return the
    earlier record (stopped or stale), if any."""
    try:
        earlier = read_record(data_dir)
    except ConfigError:
        earlier = None  # not a record: the new one replaces it
    if not _take_lock(data_dir):
        who = (
            f"{earlier.describe()}, Kafka at {earlier.bootstrap}"
            if earlier is not None
            else "see its stack.json"
        )
        raise ConfigError(
            f"another `baton up` runs with the data dir {data_dir} ({who}; it holds "
            f"{data_dir / LOCK_FILE}); use that one, stop it first, or give this one another "
            "--data-dir"
        )
    return earlier
