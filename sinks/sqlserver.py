"""A subset of ClickHouse's HTTP interface, served from the process that holds a chDB directory.

chDB lets one process open a data directory; under ``baton up`` that is the audit sink. So the
sink answers SQL for everyone else the way a ClickHouse server would, and clickhouse-connect's
HTTP client, ``curl`` and ``baton sql`` work against it unchanged::

    curl 'http://127.0.0.1:8123/?query=SELECT+count()+FROM+governance.decisions+FINAL'
    echo 'SELECT 1 FORMAT JSON' | curl --data-binary @- http://127.0.0.1:8123/

What is served: ``GET /`` and ``GET /ping`` (``Ok.``); ``GET /?query=`` (read-only, as in
ClickHouse); ``POST /`` with the query in the body, in ``?query=``, or both (then the body
follows the query, e.g. INSERT data); ``database``, ``default_format`` (or the
``X-ClickHouse-Format`` request header), ``param_<name>`` query parameters and any ClickHouse
setting as URL parameters; gzip/deflate/lz4/zstd/br request bodies; the response headers
clickhouse-connect reads (``X-ClickHouse-Format``, ``-Summary``, ``-Exception-Code``).

Not served (on purpose; a real server has them): authentication (it binds to 127.0.0.1 by
default: anyone who can reach the port can run any SQL, so do not expose it), sessions
(every request is independent; ``session_id`` is ignored), compressed responses, multipart
external data, progress headers, query cancellation.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from clickhouse_connect.driver.client import Client

from baton.schemas.errors import AuditUnavailable, ConfigError
from baton.sinks.clickhouse import ENDPOINT_FILE
from baton.sinks.query import ROW_KEYWORDS, first_keyword

__all__ = ["SqlServer", "serve_sql"]

log = logging.getLogger(__name__)

# URL parameters that steer the HTTP exchange; everything else is a ClickHouse setting
_TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "wait_end_of_query",
        "buffer_size",
        "client_protocol_version",
        "role",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "cancel_http_readonly_queries_on_client_close",
    }
)
_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRAILING_FORMAT_RE = re.compile(rb"\bFORMAT\s+(\w+)\s*;?\s*$", re.I)
# an INSERT whose data follows "FORMAT <name>": the header is text, the data any bytes
_INSERT_DATA_RE = re.compile(
    rb"^(\s*INSERT\s+INTO\s+(?:(?!\bVALUES\b|\bSELECT\b).)*?)"
    rb"\bFORMAT\s+(\w+)[ \t]*\r?\n?",
    re.I | re.S,
)
_HTTP_STATUS_BY_CODE = {
    62: 400,
    46: 400,
    47: 400,
    36: 400,
    115: 400,
    164: 403,
    60: 404,
    81: 404,
    497: 403,
}
_CODE_RE = re.compile(r"Code: (\d+)")


@dataclass
class SqlServer:
    """A running SQL endpoint; ``close()`` stops it and removes its endpoint file."""

    host: str
    port: int
    engine_path: Path
    _httpd: ThreadingHTTPServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

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


def serve_sql(client: Client, host: str = "127.0.0.1", port: int = 8123) -> SqlServer:
    """Serve SQL over HTTP for the chDB engine ``client`` has open, from a daemon thread.

    ``port=0`` picks a free port (see ``.port``). Registers the endpoint in the chDB directory
    so ``baton.sinks.clickhouse.connect`` of the same ``chdb://`` DSN finds it.
    Raises ConfigError for a non-chDB client (a ClickHouse server serves itself) and
    AuditUnavailable when the address cannot be bound.
    """
    path = getattr(client, "path", None)
    if not isinstance(path, str) or path.startswith(":memory:"):
        raise ConfigError(
            f"serve_sql: needs a client of an on-disk chDB engine (chdb:///abs/dir), "
            f"got {type(client).__name__} at {path or getattr(client, 'uri', '?')!r}"
        )
    engine_path = Path(os.path.realpath(path))
    handler = type("_Handler", (_SqlHandler,), {"engine": str(engine_path)})
    try:
        httpd = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise AuditUnavailable(
            f"cannot serve SQL on {host}:{port}: {exc.strerror or exc}; "
            "choose another port (baton sink --sql-port, 0 = any free port)"
        ) from exc
    httpd.daemon_threads = True
    bound_port = int(httpd.server_address[1])
    thread = threading.Thread(
        target=httpd.serve_forever, name=f"baton-sql:{bound_port}", daemon=True
    )
    thread.start()
    server = SqlServer(host, bound_port, engine_path, httpd, thread)
    record = {"url": server.url, "pid": os.getpid(), "started": time.time()}
    tmp = engine_path / f".{ENDPOINT_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(record))
    tmp.replace(engine_path / ENDPOINT_FILE)  # atomic: readers never see half a file
    log.info("serving SQL for %s on %s", engine_path, server.url)
    return server


class _QueryFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        match = _CODE_RE.search(message)
        self.code = int(match.group(1)) if match else 1002  # 1002 = UNKNOWN_EXCEPTION


@dataclass(slots=True)
class _Result:
    body: bytes
    fmt: str | None
    summary: dict[str, str]


class _SqlHandler(BaseHTTPRequestHandler):
    engine: str  # set on the subclass serve_sql builds
    protocol_version = "HTTP/1.1"
    server_version = "baton-sql"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sql %s " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path in ("/ping", "/") and "query" not in params:
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        if url.path != "/":
            self._send(404, b"Unknown path: only /, /ping\n", {})
            return
        self._answer(params, b"", readonly=True)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/":
            self._send(404, b"Unknown path: only /, /ping\n", {})
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        if self.headers.get_content_type() == "multipart/form-data":
            self._error(
                _QueryFailed(
                    "Code: 48. multipart/form-data (external data) is not "
                    "supported by the baton SQL endpoint"
                )
            )
            return
        try:
            body = _decompress(body, self.headers.get("Content-Encoding"))
        except Exception as exc:  # any codec failure is the client's bad body
            self._error(_QueryFailed(f"Code: 1002. cannot decode the request body: {exc}"))
            return
        self._answer(params, body, readonly=False)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _answer(self, params: dict[str, str], body: bytes, readonly: bool) -> None:
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            result = _execute(
                self.engine, params, body, readonly, self.headers.get("X-ClickHouse-Format")
            )
        except _QueryFailed as exc:
            self._error(exc, query_id)
            return
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

    def _error(self, exc: _QueryFailed, query_id: str = "") -> None:
        text = str(exc).rstrip() + "\n"
        status = _HTTP_STATUS_BY_CODE.get(exc.code, 500)
        self._send(
            status,
            text.encode(),
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(exc.code),
                "X-ClickHouse-Query-Id": query_id,
            },
        )

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _execute(
    engine: str, params: dict[str, str], body: bytes, readonly: bool, header_format: str | None
) -> _Result:
    """Run one request on a fresh chDB handle (settings and USE die with it)."""
    import chdb

    query = params.get("query", "").encode()
    sql = query + (b"\n" + body if query and body else body)
    if not sql.strip():
        raise _QueryFailed("Code: 62. Empty query")
    default_format = params.get("default_format") or header_format or "TabSeparated"
    settings = {
        k: v for k, v in params.items() if k not in _TRANSPORT_PARAMS and not k.startswith("param_")
    }
    bind = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
    try:
        conn = chdb.connect(engine)
    except Exception as exc:  # report, the server keeps serving
        raise _QueryFailed(f"Code: 1002. cannot open the chDB engine {engine}: {exc}") from exc
    try:
        for name, value in settings.items():
            if not _SETTING_NAME_RE.match(name):
                raise _QueryFailed(f"Code: 115. Unknown setting {name!r}")
            _run(conn, f"SET {name} = {_quote(value)}", "TabSeparated", {})
        if readonly:
            # as ClickHouse does for GET: reads only, settings may still change
            _run(conn, "SET readonly = 2", "TabSeparated", {})
        if params.get("database"):
            _run(conn, f"USE `{params['database'].replace('`', '')}`", "TabSeparated", {})
        insert = _INSERT_DATA_RE.match(sql)
        if insert and sql[insert.end() :].strip():
            return _insert_with_data(
                conn, insert.group(1), insert.group(2).decode(), sql[insert.end() :]
            )
        text = sql.decode("utf-8", errors="strict")
        trailing = _TRAILING_FORMAT_RE.search(sql)
        fmt = trailing.group(1).decode() if trailing else default_format
        result = _run(conn, text, fmt, bind)
        # a result set is announced with X-ClickHouse-Format, as ClickHouse does
        produces_rows = first_keyword(text) in ROW_KEYWORDS
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": "0",
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        return _Result(result.bytes() or b"", fmt if produces_rows else None, summary)
    except UnicodeDecodeError as exc:
        raise _QueryFailed(f"Code: 1002. the query is not UTF-8: {exc}") from exc
    finally:
        conn.close()


def _insert_with_data(conn: Any, head: bytes, fmt: str, data: bytes) -> _Result:
    # chDB has no request body to stream from: hand it the data as a file, as
    # clickhouse-connect's own chDB backend does
    with tempfile.NamedTemporaryFile(suffix=".insert", delete=False) as tmp:
        tmp.write(data)
    try:
        quoted = "'" + tmp.name.replace("\\", "\\\\").replace("'", "\\'") + "'"
        statement = f"{head.decode().rstrip()} FROM INFILE {quoted} FORMAT {fmt}"
        result = _run(conn, statement, "TabSeparated", {})
    finally:
        os.unlink(tmp.name)
    summary = {
        "read_rows": "0",
        "written_rows": str(result.rows_read()),
        "written_bytes": str(result.bytes_read()),
        "elapsed_ns": str(int(result.elapsed() * 1e9)),
    }
    return _Result(b"", None, summary)


def _run(conn: Any, sql: str, fmt: str, params: dict[str, str]) -> Any:
    try:
        return conn.query(sql, fmt, params=params) if params else conn.query(sql, fmt)
    except Exception as exc:  # chdb raises its own error types; all are query failures
        message = str(exc)
        start = message.find("Code: ")
        raise _QueryFailed(message[start:] if start >= 0 else f"Code: 1002. {message}") from exc


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _decompress(body: bytes, encoding: str | None) -> bytes:
    encoding = (encoding or "").strip().lower()
    if not encoding or encoding == "identity" or not body:
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "lz4":
        import lz4.frame

        # clickhouse-connect sends one LZ4 frame per block: decode them one after another
        out: list[bytes] = []
        rest = body
        while rest:
            decoder = lz4.frame.LZ4FrameDecompressor()
            out.append(decoder.decompress(rest))
            rest = decoder.unused_data if decoder.eof else b""
        return b"".join(out)
    if encoding == "zstd":
        try:
            # Python 3.14+ has it in the standard library
            from compression import zstd  # type: ignore[import-not-found]
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        return bytes(zstd.decompress(body))
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.decompress(body))
    raise ValueError(f"unsupported Content-Encoding {encoding!r} (gzip, deflate, lz4, zstd, br)")
