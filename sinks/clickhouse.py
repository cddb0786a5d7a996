"""ClickHouse clients from Baton DSNs, with ClickHouse's failures translated at the boundary.

Connection failures become AuditUnavailable (retry later); an insert whose *data* is refused
becomes RowsRefused (split it, see ``insert_rows``).

DSNs:
    ``http://user:pass@host:8123/db``, ``https://…:8443/db``  a ClickHouse server (HTTP interface;
                         https is checked against ``ca_cert`` / BATON_CLICKHOUSE_CA)
    ``chdb:///abs/dir``  embedded chDB (the real engine in this process) on a data directory
    ``chdb:rel/dir``     the same, relative to the working directory
    ``chdb://memory``    embedded chDB in memory (tests, scratch)

chDB allows one process per data directory: a second process gets "Cannot lock file
…/status". The process that holds it can serve SQL to others (``baton.sinks.sqlserver``); it
leaves an endpoint file in the directory, and :func:`connect` follows it when the directory is
taken, so ``baton sql`` works while ``baton up`` runs.

Passwords never reach a message: labels show ``user:***@``, and every text taken from a driver
error goes through ``mask_credentials`` (the original exception stays chained for debugging; it
holds no password either: clickhouse-connect sends it in a header, not in the URL).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    ClickHouseError,
    DatabaseError,
    DataError,
    OperationalError,
    ProgrammingError,
)

from baton.schemas.errors import AuditUnavailable, ConfigError, MissingExtra
from baton.schemas.redact import mask_credentials

__all__ = [
    "ENDPOINT_FILE",
    "RowsRefused",
    "Target",
    "audit_errors",
    "connect",
    "insert_rows",
    "insert_types",
    "parse_dsn",
]

#: written into a chDB directory by the process serving SQL for it (``sqlserver.serve_sql``)
ENDPOINT_FILE = "baton-sql-endpoint.json"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a DSN points: a server URL (password masked in ``label``) or a chDB directory."""

    kind: str  # "http" | "chdb"
    dsn: str = field(repr=False)  # may hold the password: printed as ``label``
    label: str
    chdb_path: Path | None = None  # None with kind "chdb" = in memory


def parse_dsn(dsn: str) -> Target:
    """Classify ``dsn``; raises ConfigError naming the DSN and the accepted forms."""
    if dsn.startswith("chdb:"):
        rest = dsn[len("chdb:") :]
        rest = rest[2:] if rest.startswith("//") else rest
        if rest in ("memory", ":memory:", ""):
            return Target("chdb", dsn, "chdb (in memory)")
        # chdb compares engine paths literally: resolve once so every spelling is one engine
        path = Path(rest).expanduser().resolve()
        return Target("chdb", dsn, f"chdb:{path}", path)
    parts = urlsplit(dsn)
    if parts.scheme in ("http", "https") and parts.hostname:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        if parts.username:
            netloc = (
                f"{parts.username}:***@{netloc}" if parts.password else f"{parts.username}@{netloc}"
            )
        label = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        return Target("http", dsn, label)
    raise ConfigError(
        f"clickhouse_dsn (BATON_CLICKHOUSE_DSN): expected http(s)://user:pass@host:port/db or "
        f"chdb:///abs/dir, got {mask_credentials(dsn)!r}"
    )


def connect(
    dsn: str,
    *,
    follow_endpoint: bool = True,
    create: bool = False,
    ca_cert: str | Path | None = None,
    verify: bool = True,
) -> Client:
    """A clickhouse-connect client for ``dsn``, checked with one round trip.

    ``ca_cert`` (BATON_CLICKHOUSE_CA) and ``verify`` (BATON_CLICKHOUSE_VERIFY) apply to an
    https:// DSN: the server's certificate must be signed by ``ca_cert`` (the system's CAs when
    None) and name the DSN's host.

    ``follow_endpoint``: when a chDB directory is held by another process that serves SQL for
    it, return an HTTP client to that process instead of failing. ``create``: a missing chDB
    directory is created (the sink); otherwise it is an error, not a new empty audit that
    answers every query with "unknown table".
    """
    target = parse_dsn(dsn)
    if target.kind == "http":
        return _connect_http(target.dsn, target.label, ca_cert=ca_cert, verify=verify)
    if target.chdb_path is not None:
        if create:
            target.chdb_path.mkdir(parents=True, exist_ok=True)
        elif not target.chdb_path.is_dir():
            raise AuditUnavailable(
                f"no audit at {target.chdb_path}: the chDB directory does not exist; check "
                "BATON_CLICKHOUSE_DSN / --dsn (`baton up` keeps it in <data-dir>/chdb, "
                "e.g. chdb:.baton/chdb)"
            )
        holder = chdb_holder(target.chdb_path)
        if holder is not None:
            endpoint = read_endpoint(target.chdb_path) if follow_endpoint else None
            if endpoint is not None:  # its DSN carries the token: labels mask it
                return _connect_http(
                    endpoint, f"{parse_dsn(endpoint).label} (serving {target.label})"
                )
            raise AuditUnavailable(
                f"the chDB directory {target.chdb_path} is held by another process ({holder}) "
                "and no SQL endpoint is registered for it; query through that process "
                "(baton sql --dsn http://127.0.0.1:PORT, the port `baton sink --sql-port` "
                "serves) or stop it first"
            )
    try:
        import chdb  # noqa: F401  (only to name the extra when it is missing)
    except ImportError as exc:
        raise MissingExtra("chdb", "embedded", "the embedded ClickHouse (chdb:// DSN)") from exc
    import clickhouse_connect

    path = str(target.chdb_path) if target.chdb_path else ":memory:"
    try:
        return clickhouse_connect.get_client(interface="chdb", path=path)
    except (ClickHouseError, RuntimeError) as exc:
        raise AuditUnavailable(f"cannot open embedded ClickHouse at {target.label}: {exc}") from exc


def _connect_http(
    dsn: str, label: str, *, ca_cert: str | Path | None = None, verify: bool = True
) -> Client:
    import clickhouse_connect

    # clickhouse-connect (1.12) takes TLS from the port, not from the DSN's scheme: without
    # `interface`, https://…:9443 would be spoken as plain HTTP, password included
    interface = urlsplit(dsn).scheme
    tls: dict[str, object] = {}
    if interface == "https":
        tls["verify"] = verify
        if ca_cert is not None:
            tls["ca_cert"] = str(ca_cert)
    try:
        # the DSN carries user, password and database; a short connect timeout so an absent
        # server is reported in seconds, not after urllib3's default retries
        return clickhouse_connect.get_client(dsn=dsn, interface=interface, connect_timeout=5, **tls)
    except OperationalError as exc:
        gist = _first_line(exc)
        if "CERTIFICATE_VERIFY_FAILED" in gist or "certificate verify failed" in gist:
            raise AuditUnavailable(
                f"ClickHouse at {label} presented a TLS certificate this client does not "
                f"trust ({gist}); set BATON_CLICKHOUSE_CA to the CA that signed it, and use "
                "the host name the certificate names"
            ) from exc
        if "SSLError" in gist or "[SSL" in gist:
            raise AuditUnavailable(
                f"the TLS handshake with ClickHouse at {label} failed ({gist}); is that port "
                "the server's https_port (8443)?"
            ) from exc
        raise AuditUnavailable(
            f"cannot reach ClickHouse at {label} ({gist}); is the server running?"
        ) from exc
    except DatabaseError as exc:
        raise AuditUnavailable(
            f"ClickHouse at {label} refused the connection: {_first_line(exc)}"
        ) from exc
    except (ProgrammingError, TypeError, ValueError) as exc:
        # a DSN query parameter the client does not take (?password=…, ?foo=…)
        raise ConfigError(
            f"clickhouse_dsn (BATON_CLICKHOUSE_DSN): {label}: the client refused its "
            f"parameters: {mask_credentials(str(exc))[:300]}; put user and password before "
            "the host (http(s)://user:pass@host:port/db)"
        ) from None


def chdb_holder(path: Path) -> str | None:
    """ "pid N" when another process holds the chDB directory ``path``, else None.

    ClickHouse takes an exclusive flock on ``<dir>/status`` for as long as the engine is open;
    probing it ourselves avoids opening the engine just to get its error printed on stderr.
    """
    status = path / "status"
    if not status.exists():
        return None
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            text = status.read_text(errors="replace")
            pid = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in text.splitlines()
                    if line.startswith("PID:")
                ),
                "?",
            )
            # our own process holds it when the engine is open here: that is not "another"
            return None if pid == str(os.getpid()) else f"pid {pid}"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def read_endpoint(path: Path) -> str | None:
    """The DSN (URL with user and token) of the SQL endpoint registered in chDB directory
    ``path``, when its process is alive."""
    try:
        record = json.loads((path / ENDPOINT_FILE).read_text())
        url, pid = str(record.get("dsn") or record["url"]), int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return url


@contextlib.contextmanager
def audit_errors(label: str, doing: str) -> Iterator[None]:
    """Translate clickhouse-connect errors raised while ``doing`` into AuditUnavailable."""
    try:
        yield
    except OperationalError as exc:
        raise AuditUnavailable(
            f"ClickHouse at {label} is unreachable while {doing}: {_first_line(exc)}"
        ) from exc
    except ClickHouseError as exc:
        raise AuditUnavailable(
            f"ClickHouse at {label} failed while {doing}: {_first_line(exc)}"
        ) from exc


class RowsRefused(Exception):
    """ClickHouse (the server, or the driver encoding the block) refused an insert's *data*,
    not the connection: splitting the rows helps. ``row_level``: some row cannot be stored
    (a value out of range, a violated constraint) - a row refused alone is that row's fault;
    otherwise the block as a whole was refused (too many partitions) and smaller ones pass.

    Internal to the sink (``write_batch`` turns it into rejected rows or AuditUnavailable),
    so it is not part of the BatonError tree.
    """

    def __init__(self, message: str, *, row_level: bool) -> None:
        super().__init__(message)
        self.row_level = row_level


#: server error codes that blame a value in the block: the block is split to find its row
ROW_DATA_CODES: dict[int, str] = {
    6: "CANNOT_PARSE_TEXT",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    38: "CANNOT_PARSE_DATE",
    41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH",
    69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE",
    72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA",
    131: "TOO_LARGE_STRING_SIZE",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    395: "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",
    407: "DECIMAL_OVERFLOW",
    469: "VIOLATED_CONSTRAINT",
    691: "UNKNOWN_ELEMENT_OF_ENUM",
}
_TOO_MANY_PARTS = 252  # also "too many partitions for a single INSERT block": that one splits


def insert_types(client: Client, table: str, columns: tuple[str, ...]) -> tuple[str, ...]:
    """The types to send ``columns`` of ``table`` (``db.name``) as: the table's own, with
    ``LowCardinality(T)`` sent as ``T`` when the server converts a Native block's types.

    Why: clickhouse-connect builds a LowCardinality column's dictionary in Python, a quarter
    of its time encoding an audit block; ClickHouse does the same in C++ when it converts the
    block on insert (``input_format_native_allow_types_conversion``, on by default, probed
    here so an older server gets the exact types). Passing the types also spares the
    ``DESCRIBE`` clickhouse-connect runs before every insert without them. Raises
    ClickHouseError (callers translate it), and AuditUnavailable when the table lacks a
    column (a schema older than this code: retried, never taken as the rows' fault).
    """
    database, name = table.split(".", 1)
    rows = client.query(
        "SELECT name, type, (SELECT any(value) FROM system.settings "
        "WHERE name = 'input_format_native_allow_types_conversion') FROM system.columns "
        "WHERE database = {db:String} AND table = {t:String}",
        parameters={"db": database, "t": name},
    ).result_rows
    types = {str(column): str(kind) for column, kind, _ in rows}
    converts = bool(rows) and str(rows[0][2]) in ("1", "true")
    missing = [c for c in columns if c not in types]
    if missing:
        raise AuditUnavailable(
            f"the audit table {table} has no column {', '.join(missing)}: its schema is older "
            "than this sink's; restart the sink to migrate it"
        )
    return tuple(_plain(types[c]) if converts else types[c] for c in columns)


def _plain(kind: str) -> str:
    return kind[len("LowCardinality(") : -1] if kind.startswith("LowCardinality(") else kind


def insert_rows(
    client: Client,
    table: str,
    rows: list[list[object]],
    columns: tuple[str, ...],
    token: str,
    label: str,
    types: tuple[str, ...] | None = None,
) -> None:
    """Insert ``rows`` with ``insert_deduplication_token=token``, failures sorted at the boundary.

    ``types``: the column types to encode with (``insert_types``); None: asked for each insert.

    Raises RowsRefused when the data was refused (a value, or a block spanning too many
    partitions), AuditUnavailable for everything else - unreachable, timeouts, a missing
    table, "too many parts" back-pressure - which retrying the same insert later can cure.
    An unknown server error is taken as the server's, never as the rows': it is retried, not
    turned into rejected rows.
    """
    doing = f"inserting {len(rows)} rows into {table} ({token[:200]})"
    typed = {} if types is None else {"column_type_names": list(types)}
    try:
        client.insert(
            table,
            rows,
            column_names=list(columns),
            settings={"insert_deduplication_token": token},
            **typed,
        )
    except OperationalError as exc:  # before DatabaseError: it is one
        raise AuditUnavailable(
            f"ClickHouse at {label} is unreachable while {doing}: {_first_line(exc)}"
        ) from exc
    except DataError as exc:  # the driver could not encode a value of the block
        raise RowsRefused(f"{_first_line(exc)}", row_level=True) from exc
    except DatabaseError as exc:
        code = exc.code if exc.code is not None else _code_of(exc)
        if code in ROW_DATA_CODES:
            raise RowsRefused(_first_line(exc), row_level=True) from exc
        if code == _TOO_MANY_PARTS and "INSERT block" in str(exc):
            raise RowsRefused(_first_line(exc), row_level=False) from exc
        raise AuditUnavailable(
            f"ClickHouse at {label} failed while {doing}: {_first_line(exc)}"
        ) from exc
    except ClickHouseError as exc:
        raise AuditUnavailable(
            f"ClickHouse at {label} failed while {doing}: {_first_line(exc)}"
        ) from exc
    except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:
        if not _raised_while_encoding(exc):
            raise AuditUnavailable(
                f"ClickHouse client for {label} failed while {doing}: {type(exc).__name__}: {exc}"
            ) from exc
        # the driver encoding a value it has no check for (NaN into a Decimal raises a bare
        # ValueError): a row's fault, like DataError
        raise RowsRefused(f"{type(exc).__name__}: {exc}"[:500], row_level=True) from exc


#: where clickhouse-connect turns Python values into column data
_ENCODING_CODE = ("/clickhouse_connect/datatypes/", "/clickhouse_connect/driverc/")


def _raised_while_encoding(exc: BaseException) -> bool:
    """Whether ``exc`` came out of the driver's value encoding (a row's fault) rather than
    from anywhere else in the client (the transport, the pool: not the rows' fault)."""
    tb = exc.__traceback__
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if any(part in path for part in _ENCODING_CODE):
            return True
        tb = tb.tb_next
    return False


def _code_of(exc: BaseException) -> int | None:
    match = re.search(r"\bCode:\s*(\d+)", str(exc))
    return int(match.group(1)) if match else None


def _first_line(exc: BaseException) -> str:
    """The gist of a ClickHouse error: from "Code: N." on, without the parser's long list of
    what it expected instead or the driver's "(for url ...)" trailer."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    start = text.find("Code: ")
    text = text[start:] if start >= 0 else text
    text = re.split(r"\. Expected one of:| \(for url |\n", text, maxsplit=1)[0]
    return mask_credentials(text)[:500]
