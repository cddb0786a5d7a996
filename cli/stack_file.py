"""The record ``baton up`` keeps of its stack: ``stack.json``, read and written safely.

``baton up`` writes ``<data-dir>/stack.json`` (``write_record``, atomically) when its broker
is up, updates it when it is ready or a child restarts, and marks it stopped on a clean exit.
It holds ``<data-dir>/stack.lock`` (flock) for as long as it runs, so a record whose
``baton up`` is gone without marking it stopped (killed, a crash) is told apart as stale
(``StackRecord.live``). How client commands find and use a record: ``baton.cli.stack_record``.
"""

from __future__ import annotations

import fcntl
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from baton.cli.audit_mark import AuditMark
from baton.schemas.errors import ConfigError
from baton.schemas.files import FileProblem, ForeignFile, read_small_file, write_data_file

if TYPE_CHECKING:
    from baton.schemas.settings import Settings

__all__ = [
    "LOCK_FILE",
    "STACK_FILE",
    "StackRecord",
    "is_baton_up",
    "lock_held",
    "lock_pid",
    "mark_stopped",
    "read_record",
    "record_path",
    "refuse_running_stack",
    "update_record",
    "write_record",
    "write_stack_record",
]

STACK_FILE = "stack.json"
#: held (flock) by the `baton up` of the data dir for as long as it runs
LOCK_FILE = "stack.lock"
#: a record is a few hundred bytes; anything bigger is not one
_MAX_RECORD_BYTES = 64 * 1024


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
    #: the audit sink's /metrics (`baton doctor` reads whether its inserts fail)
    sink_metrics_url: str | None = Field(None, max_length=1024)
    logs: dict[str, Path] = Field(default_factory=dict)
    pids: dict[str, int] = Field(default_factory=dict)
    #: bytes of memory past which `baton up` stops its embedded broker (None: not watched)
    broker_memory_max: int | None = Field(None, ge=0, le=2**62)
    #: the id in DATA_DIR/chdb/baton-audit.id of the audit this stack wrote (cli/up_audit.py:
    #: a later start without that audit refuses); None: none recorded (--no-audit, older Baton)
    audit_id: str | None = Field(None, pattern="^[0-9a-f]{32}$")
    #: a stack with this audit became ready (its tables made): a later start needs them
    audit_made: bool = False
    #: the audit's mark at the last clean stop (cli/audit_mark.py): a start whose audit holds
    #: less refuses
    audit_mark: AuditMark | None = None
    #: the public key its workers sign decisions with (``ed25519:…``): client commands take
    #: only decisions it signed (schemas/decision_signing.py); None: an older Baton's stack
    decision_keys: str | None = Field(None, max_length=1024)
    #: which key its workers link the audit's chains with (``control_seal.chain_key_id``; "":
    #: none): a start with another key, or none, is refused; None: an older Baton's stack
    chain_key_id: str | None = Field(None, pattern="^([0-9a-f]{16})?$")

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
        where = data_dir or self.data_dir
        return (
            self.state != "stopped"
            and is_baton_up(self.pid)
            and lock_held(where)
            # a record naming another pid than the lock's holder is not it
            and lock_pid(where) in (None, self.pid)
        )

    def describe(self) -> str:
        """``baton up pid N (started T)`` for messages."""
        return f"baton up pid {self.pid} (started {self.started_at:%Y-%m-%d %H:%M:%S} UTC)"


def is_baton_up(pid: int) -> bool:
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


def lock_held(data_dir: Path) -> bool:
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
    except OSError as exc:  # its parent is missing on a read-only filesystem, a file, ...
        raise ConfigError(
            f"cannot create the data dir {data_dir}: {exc.strerror or exc}; expected a "
            "directory (--data-dir, env BATON_DATA_DIR) that baton up may create and write"
        ) from None
    try:
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
    try:  # who holds it, from the moment it is taken (`baton down` of a stack still starting)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # a lock without its pid is still the lock
    return True


def lock_pid(data_dir: Path) -> int | None:
    """The pid the `baton up` that took ``data_dir``'s stack lock wrote into it (None: none,
    an older `baton up`); it names the holder only while the lock is held (``lock_held``)."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(text) if text.isdigit() and 0 < int(text) < 2**31 else None


def record_path(data_dir: Path) -> Path:
    return data_dir / STACK_FILE


def write_record(record: StackRecord) -> Path:
    """Write ``record`` into its data dir atomically (a reader sees the old or the new one)."""
    path = record_path(record.data_dir)
    # its temp name is its process's: never through a link someone left there
    temp = path.with_name(f".{STACK_FILE}.{os.getpid()}.tmp")
    write_data_file(path, record.model_dump_json(indent=2) + "\n", 0o644, "the stack record", temp)
    return path


def mark_stopped(record: StackRecord, **changes: Any) -> StackRecord:
    """Record that ``record``'s stack stopped cleanly (with ``changes``: what its audit held,
    cli/audit_mark.py), unless another stack took the dir."""
    current = read_record(record.data_dir)
    if current is not None and current.pid != record.pid:
        return current
    stopped = record.model_copy(
        update={**changes, "state": "stopped", "stopped_at": datetime.now(UTC)}
    )
    write_record(stopped)
    return stopped


def read_record(data_dir: Path) -> StackRecord | None:
    """The record in ``data_dir``, None when there is none; ``ConfigError`` naming the file
    when it is not a record (not a regular file, too big, not the format)."""
    path = record_path(data_dir)
    try:
        data = read_small_file(path, _MAX_RECORD_BYTES, mine=True)  # (H2, session 27)
    except FileNotFoundError:
        return None
    except FileProblem as exc:
        expected = (
            "use --bootstrap / --dsn, or a --data-dir of your own"
            if isinstance(exc, ForeignFile)
            else "expected `baton up`'s JSON of a few hundred bytes"
        )
        raise ConfigError(f"stack record {path}: {exc}; {expected}") from None
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


def write_stack_record(
    data_dir: Path,
    settings: Settings,
    broker: Any,
    no_audit: bool,
    logs: Path,
    broker_memory_max: int | None = None,
    audit_id: str | None = None,
    decision_keys: str | None = None,
    chain_key_id: str | None = None,
) -> StackRecord:
    """Record the starting stack in ``data_dir``/stack.json (client commands find it there)."""
    names = ("worker",) if no_audit else ("worker", "sink", "alerts")
    record = StackRecord(
        state="starting",
        pid=os.getpid(),
        started_at=datetime.now(UTC),
        data_dir=data_dir,
        app_id=settings.app_id,
        bootstrap=broker.bootstrap,
        topic_prefix=settings.topic_prefix,
        partitions=settings.partitions,
        policy=Path(settings.policy).resolve() if settings.policy else None,
        clickhouse_dsn=None if no_audit else f"chdb://{data_dir / 'chdb'}",
        logs={
            "broker": broker.log_path or logs,
            **{name: logs / f"{name}.log" for name in names},
        },
        pids={"broker": broker.pid or 0},
        broker_memory_max=broker_memory_max,
        audit_id=audit_id,
        decision_keys=decision_keys,
        chain_key_id=chain_key_id,
    )
    write_record(record)
    return record
