"""ClickHouse clients from Baton DSNs, with ClickHouse's failures translated at the boundary.

Connection failures become AuditUnavailable (retry later); inserts and their failures are
``audit_insert``'s.

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
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    ClickHouseError,
    DatabaseError,
    OperationalError,
    ProgrammingError,
)

from baton.schemas.errors import AuditUnavailable, ConfigError, MissingExtra
from baton.schemas.files import FileProblem, read_small_file
from baton.schemas.redact import mask_credentials

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENDPOINT_FILE",
    "Target",
    "audit_errors",
    "connect",
    "endpoint_record",
    "parse_dsn",
]

#: written into a chDB directory by the process serving SQL for it (``sqlserver.serve_sql``)
ENDPOINT_FILE = "baton-sql-endpoint.json"
#: how long an HTTP request to ClickHouse may go unanswered (Settings.clickhouse_timeout_s)
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where a DSN points: a server URL (password masked in ``label``) or a chDB directory."""

    kind: str  # "http" | "chdb"
    dsn: str = field(repr=False)  # may hold the password: printed as ``label``
    label: str
    chdb_path: Path | None = None  # None with kind "chdb" = in memory


#: the longest host name DNS has (RFC 1035); a longer one is refused, not echoed
_MAX_HOST = 253
#: a chdb DSN that starts like ``user:pass@``: refused without echoing it
_CHDB_CREDENTIALS = re.compile(r"[^/@]*:[^/@]*@")


def parse_dsn(dsn: str) -> Target:
    """Classify ``dsn``; raises ConfigError naming the DSN and the accepted forms."""
    if dsn.startswith("chdb:"):
        rest = dsn[len("chdb:") :]
        rest = rest[2:] if rest.startswith("//") else rest
        if rest in ("memory", ":memory:"):
            return Target("chdb", dsn, "chdb (in memory)")
        if not rest:  # `chdb:$AUDIT_DIR`, unset: an audit in memory lost every decision
            raise ConfigError(
                "clickhouse_dsn (BATON_CLICKHOUSE_DSN): the chdb DSN names no directory; "
                "expected chdb:///abs/dir or chdb:rel/dir (chdb://memory: an audit in memory, "
                "gone when the process ends)"
            )
        if _CHDB_CREDENTIALS.match(rest):  # chdb://user:pass@/dir: a server DSN's habit
            raise ConfigError(
                "clickhouse_dsn (BATON_CLICKHOUSE_DSN): a chdb DSN names a directory and takes "
                "no user or password (chdb:///abs/dir; a server is http(s)://user:pass@host:port)"
            )
        # chdb compares engine paths literally: resolve once so every spelling is one engine
        path = Path(rest).expanduser().resolve()
        if path == Path(path.anchor):  # `chdb:///$AUDIT_DIR`, unset: chDB's files in /
            raise ConfigError(
                "clickhouse_dsn (BATON_CLICKHOUSE_DSN): the chdb DSN names the filesystem root "
                f"({path}); expected chdb:///abs/dir or chdb:rel/dir, a directory of the audit's "
                "own"
            )
        return Target("chdb", dsn, f"chdb:{path}", path)
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:  # a port past 65535 or not a number, an IPv6 bracket left open
        raise ConfigError(
            f"clickhouse_dsn (BATON_CLICKHOUSE_DSN): {exc} in {mask_credentials(dsn)[:200]!r}; "
            "expected http(s)://user:pass@host:port/db or chdb:///abs/dir"
        ) from None
    if parts.scheme in ("http", "https") and parts.hostname:
        if len(parts.hostname) > _MAX_HOST:  # DNS's limit; a 60 KB one made a 60 KB error
            raise ConfigError(
                f"clickhouse_dsn (BATON_CLICKHOUSE_DSN): a host name of "
                f"{len(parts.hostname)} characters ({parts.hostname[:40]!r}…); at most "
                f"{_MAX_HOST}"
            )
        netloc = parts.hostname + (f":{port}" if port else "")
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
    timeout_s: float | None = None,
) -> Client:
    """A clickhouse-connect client for ``dsn``, checked with one round trip.

    ``timeout_s`` (BATON_CLICKHOUSE_TIMEOUT_S; None: ``DEFAULT_TIMEOUT_S``): how long an HTTP
    request may go unanswered, the first one included (clickhouse-connect's own is 300 s).

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
        return _connect_http(
            target.dsn, target.label, ca_cert=ca_cert, verify=verify, timeout_s=timeout_s
        )
    if target.chdb_path is not None:
        if create:
            try:
                target.chdb_path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a read-only place, a file in the way: was a traceback
                raise ConfigError(
                    f"clickhouse_dsn (BATON_CLICKHOUSE_DSN): cannot create the chDB directory "
                    f"{target.chdb_path}: {exc.strerror or exc}; expected a directory this "
                    "process may create and write"
                ) from None
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
                    endpoint,
                    f"{parse_dsn(endpoint).label} (serving {target.label})",
                    timeout_s=timeout_s,
                )
            raise AuditUnavailable(
                f"the chDB directory {target.chdb_path} is held by another process ({holder}) "
                "and no SQL endpoint is registered for it; query through that process "
                "(baton sql --dsn http://127.0.0.1:PORT, the port `baton sink --sql-port` "
                "serves) or stop it first"
            )
    if (
        target.chdb_path is not None
        and target.chdb_path.is_dir()
        and not os.access(target.chdb_path, os.W_OK | os.X_OK)
    ):
        # chDB writes in the directory it opens, even to read (its status and temporary
        # files): it failed with "Error initializing EmbeddedServer: . (BAD_ARGUMENTS)"
        # (session 29, H3: a read-only backup copy of an audit)
        raise AuditUnavailable(
            f"the chDB directory {target.chdb_path} is not writable by this process: chDB "
            "writes in the directory it opens, even to query it; copy it to a writable "
            f"place (cp -r {target.chdb_path} /tmp/audit-copy) and pass "
            "--dsn chdb:///tmp/audit-copy"
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
    dsn: str,
    label: str,
    *,
    ca_cert: str | Path | None = None,
    verify: bool = True,
    timeout_s: float | None = None,
) -> Client:
    import clickhouse_connect

    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s

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
        # server is reported in seconds, not after urllib3's default retries; a read timeout
        # so a port that accepts and never answers is too (clickhouse-connect waits 300 s)
        return clickhouse_connect.get_client(
            dsn=dsn,
            interface=interface,
            connect_timeout=5,
            send_receive_timeout=timeout_s,
            **tls,
        )
    except OperationalError as exc:
        gist = _first_line(exc)
        if "timed out" in gist.lower():
            raise AuditUnavailable(
                f"ClickHouse at {label} accepted the connection but did not answer within "
                f"{timeout_s:g} s (clickhouse_timeout_s, BATON_CLICKHOUSE_TIMEOUT_S); is that "
                "port a ClickHouse HTTP interface, and is the server overloaded?"
            ) from exc
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
            f"cannot reach ClickHouse at {label} ({_socket_gist(gist)}); is the server running?"
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
    record = endpoint_record(path / ENDPOINT_FILE)
    url, pid = record.get("dsn") or record.get("url"), record.get("pid")
    # pid 0 or -1 would pass os.kill(pid, 0) as alive (a process group, every process)
    if not isinstance(url, str) or type(pid) is not int or not 0 < pid < 2**31:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return url


def endpoint_record(file: Path) -> dict[str, Any]:
    """The JSON object in ``file`` (small, a regular file), or an empty one when there is none
    or it is anything else: a data dir's file is not trusted to be the one the sink wrote."""
    try:
        record = json.loads(read_small_file(file, 64 * 1024, mine=True))
    except (FileNotFoundError, FileProblem, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


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


def _socket_gist(gist: str) -> str:
    """urllib3's refusal ("HTTPConnectionPool(host='h', port=1): Max retries exceeded with
    url: /?query_id=… (Caused by NewConnectionError(… [Errno 111] Connection refused …)")
    as "h:1: connection refused", as the Kafka commands say it; other texts unchanged."""
    where = re.search(r"host='([^']*)', port=(\d+)", gist)
    errno = re.search(r"\[Errno -?\d+\] ([^\"')]+)", gist)
    resolve = re.search(r"Failed to resolve '([^']*)'", gist)
    if where is None or (errno is None and resolve is None):
        return gist
    address = f"{where[1]}:{where[2]}"
    if resolve is not None:
        return f"{address}: cannot resolve {resolve[1]!r}"
    assert errno is not None
    return f"{address}: {errno[1].strip().lower()}"


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
