"""A read-only subset of ClickHouse's HTTP interface, served from the process that holds a chDB
directory, to callers holding this start's token.

chDB lets one process open a data directory; under ``baton up`` that is the audit sink. So the
sink answers SQL for everyone else the way a ClickHouse server with a read-only user would, and
clickhouse-connect, ``curl`` and ``baton sql`` work against it with the DSN it prints::

    curl -u baton:TOKEN 'http://127.0.0.1:8123/?query=SELECT+count()+FROM+governance.decisions'
    echo 'SELECT 1 FORMAT JSON' | curl --data-binary @- http://baton:TOKEN@127.0.0.1:8123/
    clickhouse_connect.get_client(dsn="http://baton:TOKEN@127.0.0.1:8123")

Who may ask: whoever presents user ``baton`` and the token generated at this start
(``secrets.token_urlsafe(32)``), as ClickHouse takes a user and password - HTTP Basic auth,
``X-ClickHouse-User``/``X-ClickHouse-Key`` headers or ``user``/``password`` URL parameters;
else HTTP 401. The token is written, with the DSN, into ``baton-sql-endpoint.json`` (mode
0600) in the chDB directory, where ``baton sql``/``trace``/``alerts check`` find it. Requests
a browser sends for another site's page (``Origin``, ``Sec-Fetch-Site``, a foreign ``Host``
on a loopback bind) are refused before anything else. ``GET /`` and ``/ping`` answer ``Ok.``
to any program without credentials, as ClickHouse does.

What runs: one SELECT, WITH, SHOW, DESCRIBE, EXISTS or EXPLAIN statement per request, on a
fresh chDB session with ``readonly=1`` and resource limits set *after* the request's own
settings (so no URL parameter lifts them, and readonly=1 refuses any SETTINGS clause). Before
it runs, ClickHouse's own parser prints the statement (``formatQuery``) and
``sql_guard.check_statement`` refuses writes, multi-statements, ``INTO OUTFILE`` (chDB writes
it even under readonly=1), ``file()`` (chDB reads any file under readonly=1) and every table
function that reaches files, URLs, other servers or programs. The statement as ClickHouse
printed it is what runs, so the check and the engine read the same text. URL parameters may
set only the output-format settings in ``sql_guard.USER_SETTINGS``.

Served besides: ``database``, ``default_format`` (or the ``X-ClickHouse-Format`` header),
``param_<name>`` bound parameters, gzip/deflate/lz4/zstd request bodies (size-capped after
decompression), the response headers clickhouse-connect reads.

Remaining exposure (what this does not protect):
- Anyone who can read the chDB directory's endpoint file - the same OS user, root, a backup -
  has the token, and anyone who can read the chDB directory itself reads the audit without any
  endpoint; keep the data directory private to the user running Baton.
- The token is printed on ``baton up``'s ready line (stdout): whatever captures that output
  holds it. It changes at each start of the serving process; it is not rotated otherwise.
- No TLS: on the loopback interface nothing leaves the machine, but with ``--sql-host`` on
  another interface the token and the results cross the network in clear text (a warning
  says so). Use a real ClickHouse server with TLS for remote readers.
- A token holder can read all of the audit and can make the sink work: each query is bounded
  (``SqlLimits``: execution time, memory, result rows and bytes, concurrent queries, request
  size), but many bounded queries still cost CPU that the sink shares.
- ``read_only=False`` (a stand-in ClickHouse server for tests) runs anything, writes included,
  for a token holder; no ``baton`` command sets it.
Not served (a real server has them): sessions (``session_id`` is ignored), compressed
responses, multipart external data, progress headers, query cancellation.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from clickhouse_connect.driver.client import Client

from baton.schemas.errors import AuditUnavailable, ConfigError
from baton.sinks.clickhouse import ENDPOINT_FILE
from baton.sinks.sql_body import BodyTooLarge, decode_body
from baton.sinks.sql_exec import QueryFailed, SqlLimits, execute_any, execute_read
from baton.sinks.sql_guard import (
    DENIED_FUNCTIONS,
    ENDPOINT_USER,
    Refused,
    check_browser,
    check_credentials,
    denied_functions,
    is_loopback,
)

__all__ = ["SqlLimits", "SqlServer", "serve_sql"]  # SqlLimits lives in sql_exec

log = logging.getLogger(__name__)


_MAX_PARAMS = 200
_QUERY_STRING_RE = re.compile(r"\?[^\s'\"]*")
_QUERY_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_HTTP_STATUS_BY_CODE = {
    62: 400,
    46: 400,
    47: 400,
    36: 400,
    73: 400,
    115: 400,
    164: 403,
    60: 404,
    81: 404,
    497: 403,
    516: 401,
    202: 503,
}


@dataclass(frozen=True, slots=True)
class _Config:
    engine: str
    token: str
    port: int
    loopback_only: bool
    read_only: bool
    limits: SqlLimits
    denied: frozenset[str]
    slots: threading.BoundedSemaphore


@dataclass
class SqlServer:
    """A running SQL endpoint; ``close()`` stops it and removes its endpoint file.

    ``url`` has no credentials; ``dsn`` is the URL with them (``http://baton:TOKEN@…``)."""

    host: str
    port: int
    engine_path: Path
    token: str = field(repr=False)
    _httpd: ThreadingHTTPServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    user: str = ENDPOINT_USER

    @property
    def url(self) -> str:
        # a wildcard bind is reached locally through the loopback address
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def dsn(self) -> str:
        return self.url.replace("http://", f"http://{self.user}:{self.token}@", 1)

    def close(self) -> None:
        endpoint = self.engine_path / ENDPOINT_FILE
        try:
            if json.loads(endpoint.read_text()).get("pid") == os.getpid():
                endpoint.unlink()
        except (OSError, ValueError):
            pass
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SqlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_sql(
    client: Client,
    host: str = "127.0.0.1",
    port: int = 8123,
    *,
    limits: SqlLimits | None = None,
    read_only: bool = True,
    token: str | None = None,
) -> SqlServer:
    """Serve SQL over HTTP for the chDB engine ``client`` has open, from a daemon thread.

    ``port=0`` picks a free port (see ``.port``). A token is generated for this start (or
    ``token`` is used) and written with the DSN into ``<chdb dir>/baton-sql-endpoint.json``
    (mode 0600), so ``baton.sinks.clickhouse.connect`` of the same ``chdb://`` DSN finds it.
    A ``host`` other than a loopback address is logged as a warning: the endpoint has no TLS.
    ``read_only=False`` runs any statement (a stand-in ClickHouse server for tests).
    Raises ConfigError for a non-chDB client (a ClickHouse server serves itself) and
    AuditUnavailable when the address cannot be bound.
    """
    path = getattr(client, "path", None)
    if not isinstance(path, str) or path.startswith(":memory:"):
        raise ConfigError(
            f"serve_sql: needs a client of an on-disk chDB engine (chdb:///abs/dir), "
            f"got {type(client).__name__} at {path or getattr(client, 'uri', '?')!r}"
        )
    if token is not None and len(token) < 16:
        raise ConfigError(f"serve_sql: a token needs at least 16 characters, got {len(token)}")
    limits = limits or SqlLimits()
    engine_path = Path(os.path.realpath(path))
    denied = DENIED_FUNCTIONS
    if read_only:
        # every table function this engine offers, except the few that only compute: a
        # connector added by a newer chDB is refused without a change here
        names = client.query("SELECT name FROM system.table_functions").result_rows
        denied = denied_functions(str(row[0]) for row in names)
    handler = type("_Handler", (_SqlHandler,), {"timeout": limits.socket_timeout_s})
    try:
        httpd = _Server((host, port), handler)
    except OSError as exc:
        raise AuditUnavailable(
            f"cannot serve SQL on {host}:{port}: {exc.strerror or exc}; "
            "choose another port (baton sink --sql-port, 0 = any free port)"
        ) from exc
    bound_port = int(httpd.server_address[1])
    # set before the first request is served; the Origin check needs the port actually bound
    handler.config = config = _Config(
        engine=str(engine_path),
        token=token or secrets.token_urlsafe(32),
        port=bound_port,
        loopback_only=is_loopback(host),
        read_only=read_only,
        limits=limits,
        denied=denied,
        slots=threading.BoundedSemaphore(limits.max_concurrent_queries),
    )
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": 0.1},  # how long close() waits for the loop to notice
        name=f"baton-sql:{bound_port}",
        daemon=True,
    )
    thread.start()
    server = SqlServer(host, bound_port, engine_path, config.token, httpd, thread)
    _write_endpoint(
        engine_path,
        {"url": server.url, "dsn": server.dsn, "pid": os.getpid(), "started": time.time()},
    )
    if not config.loopback_only:
        log.warning(
            "serving SQL on %s:%d, beyond the loopback interface: the token and the results "
            "cross the network without TLS",
            host,
            bound_port,
        )
    log.info("serving SQL for %s on %s (user %s)", engine_path, server.url, ENDPOINT_USER)
    return server


def _write_endpoint(engine_path: Path, record: dict[str, Any]) -> None:
    """Write the endpoint file readable by its owner only, atomically (readers never see half
    a file, nor a moment where it is readable by others)."""
    tmp = engine_path / f".{ENDPOINT_FILE}.{os.getpid()}"
    tmp.unlink(missing_ok=True)  # a leftover of a crashed start
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, json.dumps(record).encode())
    finally:
        os.close(fd)
    tmp.replace(engine_path / ENDPOINT_FILE)


def _too_large(what: str, limit: int | None) -> Refused:
    return Refused(
        62,
        413,
        "SYNTAX_ERROR",
        f"Max query size exceeded: the request body ({what[:40]}) is larger than the SQL "
        f"endpoint's {limit} bytes",
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hung up mid-answer, a timed-out idle connection: one line, no traceback
        log.debug("SQL endpoint: connection from %s ended: %s", client_address[0], _last_error())


def _last_error() -> str:
    exc = sys.exception()
    return f"{type(exc).__name__}: {exc}"[:300] if exc is not None else "?"


class _SqlHandler(BaseHTTPRequestHandler):
    config: _Config  # set on the subclass serve_sql builds
    protocol_version = "HTTP/1.1"
    server_version = "baton-sql"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # the path only: a query string may hold the password
        log.debug("sql %s %s %s %s", self.client_address[0], self.command, self._path(), code)

    def log_message(self, format: str, *args: Any) -> None:
        # http.server's own lines (a malformed request) quote the request line: no query string
        text = _QUERY_STRING_RE.sub("?…", format % args)
        log.debug("sql %s %s", self.client_address[0], text[:500])

    def _path(self) -> str:
        return urlsplit(self.path).path[:200]

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = self._params(url.query)
        if params is None or not self._from_a_program():
            return
        if url.path in ("/ping", "/") and "query" not in params:
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        if url.path != "/":
            self._send(404, b"Unknown path: only /, /ping\n", {})
            return
        if self._authenticated(params):
            self._answer(params, b"", get=True)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        params = self._params(url.query)
        if params is None or not self._from_a_program():
            return
        if url.path != "/":
            self._send(404, b"Unknown path: only /, /ping\n", {}, close=True)
            return
        if not self._authenticated(params):
            return
        limit = self.config.limits.max_request_bytes if self.config.read_only else None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or (limit is not None and length > limit):
            self._refuse(_too_large(self.headers.get("Content-Length", ""), limit))
            return
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            try:
                body = self._read_chunked(limit)
            except ValueError:
                self._fail(400, 62, "Code: 62. malformed chunked request body", "", close=True)
                return
            if body is None:
                self._refuse(_too_large("chunked", limit))
                return
        else:
            body = self.rfile.read(length) if length else b""
        if self.headers.get_content_type() == "multipart/form-data":
            self._error(
                QueryFailed(
                    "Code: 48. multipart/form-data (external data) is not "
                    "supported by the baton SQL endpoint"
                )
            )
            return
        try:
            body = decode_body(body, self.headers.get("Content-Encoding"), limit)
        except BodyTooLarge:
            self._refuse(_too_large("decompressed", limit))
            return
        except Exception as exc:  # any codec failure is the client's bad body
            self._error(QueryFailed(f"Code: 1002. cannot decode the request body: {exc}"))
            return
        self._answer(params, body, get=False)

    def _params(self, query: str) -> dict[str, str] | None:
        try:
            return dict(parse_qsl(query, keep_blank_values=True, max_num_fields=_MAX_PARAMS))
        except ValueError:
            self._send(
                400,
                f"Code: 36. more than {_MAX_PARAMS} URL parameters. (BAD_ARGUMENTS)\n".encode(),
                {"X-ClickHouse-Exception-Code": "36"},
                close=True,
            )
            return None

    def _from_a_program(self) -> bool:
        try:
            check_browser(self.headers, self.config.port, self.config.loopback_only)
        except Refused as exc:
            self._refuse(exc)
            return False
        return True

    def _authenticated(self, params: dict[str, str]) -> bool:
        try:
            check_credentials(self.headers, params, self.config.token)
        except Refused as exc:
            self._refuse(exc)
            return False
        return True

    def _read_chunked(self, limit: int | None) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline(100).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline(100)
                return b"".join(parts)
            total += size
            if limit is not None and total > limit:
                return None
            parts.append(self.rfile.read(size))
            self.rfile.readline(100)

    def _answer(self, params: dict[str, str], body: bytes, get: bool) -> None:
        query_id = params.get("query_id", "")
        if not _QUERY_ID_RE.match(query_id):  # echoed in a header: no CR/LF, no junk
            query_id = str(uuid.uuid4())
        config = self.config
        if not config.slots.acquire(timeout=config.limits.queue_wait_s):
            self._error(
                QueryFailed(
                    f"Code: 202. Too many simultaneous queries: "
                    f"{config.limits.max_concurrent_queries} are running and none finished "
                    f"within {config.limits.queue_wait_s:g} s. (TOO_MANY_SIMULTANEOUS_QUERIES)"
                ),
                query_id,
            )
            return
        try:
            header_format = self.headers.get("X-ClickHouse-Format")
            if config.read_only:
                result = execute_read(
                    config.engine, params, body, header_format, config.limits, config.denied
                )
            else:
                result = execute_any(config.engine, params, body, get, header_format)
        except Refused as exc:
            self._refuse(exc, query_id)
            return
        except QueryFailed as exc:
            self._error(exc, query_id)
            return
        finally:
            config.slots.release()
        headers = {
            "Content-Type": "text/plain; charset=UTF-8"
            if result.fmt in (None, "TabSeparated", "TSV", "CSV")
            else "application/octet-stream",
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Summary": json.dumps(result.summary),
            "X-ClickHouse-Timezone": "UTC",
            "X-ClickHouse-Server-Display-Name": "baton-sql",
        }
        if result.fmt:
            headers["X-ClickHouse-Format"] = result.fmt
        self._send(200, result.body, headers)

    def _refuse(self, exc: Refused, query_id: str = "") -> None:
        log.warning(
            "SQL endpoint refused %s %s from %s: %s",
            self.command,
            self._path(),
            self.client_address[0],
            str(exc)[:300],
        )
        self._fail(exc.status, exc.code, str(exc), query_id, close=True)

    def _error(self, exc: QueryFailed, query_id: str = "") -> None:
        self._fail(_HTTP_STATUS_BY_CODE.get(exc.code, 500), exc.code, str(exc), query_id)

    def _fail(self, status: int, code: int, text: str, query_id: str, close: bool = False) -> None:
        self._send(
            status,
            (text.rstrip() + "\n").encode(),
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(code),
                "X-ClickHouse-Query-Id": query_id,
            },
            close=close,
        )

    def _send(self, status: int, body: bytes, headers: dict[str, str], close: bool = False) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if close:  # the request body may be unread: this connection cannot carry another
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
