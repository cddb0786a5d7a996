"""Answers one HTTP request of the SQL endpoint: origin, credentials, body, then the result.

The order is the endpoint's promise (``sqlserver``'s docstring): a browser's request for
another site is refused before anything else, then credentials, then the body's size (raw and
decoded), then the statement, run by ``sql_exec``. Every refusal is a ClickHouse-style error
body with ``X-ClickHouse-Exception-Code``; a refusal before the body was read closes the
connection.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from baton.sinks.sql_body import (
    BodyTooLarge,
    FormRefused,
    UnsupportedEncoding,
    decode_body,
    form_query,
)
from baton.sinks.sql_exec import QueryFailed, SqlLimits, execute_any, execute_read
from baton.sinks.sql_guard import Refused, check_browser, check_credentials
from baton.streams.net import BoundedConnections

__all__ = ["EndpointConfig", "SqlHandler", "SqlHttpServer"]

# the endpoint's one logger: operators filter on baton.sinks.sqlserver
log = logging.getLogger("baton.sinks.sqlserver")

_MAX_PARAMS = 200
#: what a connection may hold before its credentials are read (a client without the token):
#: a request's line and headers, at most HEAD_MAX_BYTES (http.server read 100 header lines of
#: 64 KB each, 6.5 MB a connection), all in within HEAD_DEADLINE_S of their first byte (a
#: byte within each idle timeout held the thread for ever); at most MAX_CONNECTIONS served at
#: once, the rest closed unread (each held a thread of the audit sink). Not covered: clients
#: reconnecting as fast as they are let go keep the slots busy (as /metrics)
HEAD_MAX_BYTES = 64 * 1024
HEAD_DEADLINE_S = 10.0
MAX_CONNECTIONS = 256
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
class EndpointConfig:
    """What every request of one endpoint start is checked and run with."""

    engine: str
    token: str
    port: int
    loopback_only: bool
    read_only: bool
    limits: SqlLimits
    denied: frozenset[str]
    slots: threading.BoundedSemaphore


def _too_large(what: str, limit: int | None) -> Refused:
    return Refused(
        62,
        413,
        "SYNTAX_ERROR",
        f"Max query size exceeded: the request body ({what[:40]}) is larger than the SQL "
        f"endpoint's {limit} bytes",
    )


class SqlHttpServer(BoundedConnections, ThreadingHTTPServer):
    """The listening socket; one thread per connection, at most MAX_CONNECTIONS of them
    (``streams.net.BoundedConnections``)."""

    daemon_threads = True

    @property  # type: ignore[override]
    def max_connections(self) -> int:  # the module's, read per connection (tests set it)
        return MAX_CONNECTIONS

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hung up mid-answer, a timed-out idle connection: one line, no traceback
        log.debug("SQL endpoint: connection from %s ended: %s", client_address[0], _last_error())


def _last_error() -> str:
    exc = sys.exception()
    return f"{type(exc).__name__}: {exc}"[:300] if exc is not None else "?"


class _HeadBound(io.RawIOBase):
    """A connection's bytes, each read waiting the idle timeout at most; while a request's
    head is read (``head``), at most HEAD_MAX_BYTES of it (then end of file: http.server
    answers or drops the request), all within HEAD_DEADLINE_S of its first byte."""

    def __init__(self, sock: socket.socket, idle_s: float | None) -> None:
        super().__init__()
        self._sock, self._idle_s = sock, idle_s
        self._left: int | None = None  # None: the body (bounded by the handler)
        self._deadline: float | None = None

    def head(self) -> None:
        self._left, self._deadline = HEAD_MAX_BYTES, None

    def body(self) -> None:
        self._left = self._deadline = None
        # the socket's timeout applies to sends too: left at what remained of the head's
        # deadline (a slow but legal head: a fraction of a second), the answer to a client
        # reading it at its own pace was cut off
        self._sock.settimeout(self._idle_s)

    def cut(self) -> bool:
        """Whether the head's reads ran into HEAD_MAX_BYTES (they may hold more than the
        head: the body's first bytes, sent with it)."""
        return self._left is not None and self._left <= 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wait = self._idle_s
        if self._left is not None:
            if self._left <= 0:
                return 0
            view = view[: self._left]
            if self._deadline is not None:
                wait = self._deadline - time.monotonic()
                if wait <= 0:
                    raise TimeoutError("the request's head took past its deadline")
                wait = wait if self._idle_s is None else min(wait, self._idle_s)
        self._sock.settimeout(wait)
        n = self._sock.recv_into(view)
        if self._left is not None:
            self._left -= n
            if self._deadline is None and n:
                self._deadline = time.monotonic() + HEAD_DEADLINE_S
        return n


class SqlHandler(BaseHTTPRequestHandler):
    """One connection's requests: GET and POST as ClickHouse's HTTP interface answers them."""

    config: EndpointConfig  # set on the subclass serve_sql builds
    protocol_version = "HTTP/1.1"
    server_version = "baton-sql"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own file: it would keep the socket open
        self._bound = _HeadBound(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._bound)

    def handle_one_request(self) -> None:
        self._bound.head()
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        # at the bound, bytes read but not taken by the head (the body's, read ahead with it)
        # show that the head ended within it: a legal head and its body were refused 431
        # (peek reads nothing new: at the bound the head's reads return end of file)
        if parsed and self._bound.cut() and not self.rfile.peek(1):
            self.send_error(431, f"request head past {HEAD_MAX_BYTES} bytes")
            return False
        self._bound.body()  # its size is checked against the limits before it is read
        return parsed

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
        # answered without the token, so the connection ends with the answer: kept alive, a
        # ping every few seconds held a connection slot for ever with no token (review H4)
        if url.path in ("/ping", "/") and "query" not in params:
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"}, close=True)
            return
        if url.path != "/":
            self._send(404, b"Unknown path: only /, /ping\n", {}, close=True)
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
            self._answer_form(params, body)
            return
        try:
            body = decode_body(body, self.headers.get("Content-Encoding"), limit)
        except BodyTooLarge:
            self._refuse(_too_large("decompressed", limit))
            return
        except UnsupportedEncoding as exc:
            self._refuse(Refused(48, 415, "NOT_IMPLEMENTED", str(exc)))
            return
        except Exception as exc:  # a corrupt lz4 frame is the client's bad body
            self._error(QueryFailed(f"Code: 1002. cannot decode the request body: {exc}"))
            return
        self._answer(params, body, get=False)

    def _answer_form(self, params: dict[str, str], body: bytes) -> None:
        """A query sent as a form (clickhouse-connect's, when its bound parameters pass 4 KB):
        its ``query`` field is the SQL, its ``param_*`` fields join the URL's; nothing else."""
        try:
            if self.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
                raise FormRefused("a compressed form")
            sql, fields = form_query(body, self.headers.get("Content-Type", ""), _MAX_PARAMS)
            if "query" in params or fields.keys() & params.keys():
                raise FormRefused("a field given both in the URL and in the form")
        except Exception as exc:  # FormRefused, or a body the parser cannot take
            self._error(QueryFailed(f"Code: 48. multipart/form-data: {exc}: not served"))
            return
        self._answer({**params, **fields}, sql, get=False)

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
