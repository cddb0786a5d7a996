"""One SQL endpoint request run on a fresh chDB session: checked and read-only, or anything
(the test stand-in of a ClickHouse server).

A read runs as ``sqlserver``'s docstring says: the request's allowed settings, then the limits
and ``readonly=1``; ClickHouse's ``formatQuery`` prints the statement, ``sql_guard`` checks that
text, and that text runs. Failures are ``QueryFailed`` (a ClickHouse error text and code) or
``sql_guard.Refused``; nothing else escapes but bugs.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

from baton.sinks.query import ROW_KEYWORDS, first_keyword
from baton.sinks.sql_guard import DENIED_FUNCTIONS, check_settings, check_statement

__all__ = ["QueryFailed", "RequestResult", "SqlLimits", "execute_any", "execute_read"]


@dataclass(frozen=True, slots=True)
class SqlLimits:
    """What one request may cost; the first four are ClickHouse settings set after the
    request's own, under readonly=1, so a request cannot lift them."""

    max_execution_time_s: int = 60
    max_memory_usage: int = 2 * 1024**3
    max_result_rows: int = 5_000_000
    max_result_bytes: int = 512 * 1024**2
    #: queries running at once; the next waits up to ``queue_wait_s``, then gets HTTP 503
    max_concurrent_queries: int = 4
    queue_wait_s: float = 10.0
    #: request body, after decompression (ClickHouse parses at most 256 KiB of a query)
    max_request_bytes: int = 1024**2
    #: an idle or slow connection is closed after this many seconds
    socket_timeout_s: float = 60.0

    def settings(self) -> list[tuple[str, str]]:
        return [
            ("max_execution_time", str(self.max_execution_time_s)),
            ("max_memory_usage", str(self.max_memory_usage)),
            ("max_result_rows", str(self.max_result_rows)),
            ("max_result_bytes", str(self.max_result_bytes)),
            ("result_overflow_mode", "throw"),
            ("readonly", "1"),  # last: after it, no setting can change
        ]


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
_FORMAT_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_TRAILING_FORMAT_RE = re.compile(rb"\bFORMAT\s+(\w+)\s*;?\s*$", re.I)
# an INSERT whose data follows "FORMAT <name>": the header is text, the data any bytes
_INSERT_DATA_RE = re.compile(
    rb"^(\s*INSERT\s+INTO\s+(?:(?!\bVALUES\b|\bSELECT\b).)*?)"
    rb"\bFORMAT\s+(\w+)[ \t]*\r?\n?",
    re.I | re.S,
)
_CODE_RE = re.compile(r"Code: (\d+)")


class QueryFailed(Exception):
    """ClickHouse (or the endpoint, in its words) refused the query; ``code`` is its error code."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        match = _CODE_RE.search(message)
        self.code = int(match.group(1)) if match else 1002  # 1002 = UNKNOWN_EXCEPTION


@dataclass(slots=True)
class RequestResult:
    """The response body, the format that announces rows (None for a command) and the
    X-ClickHouse-Summary counters."""

    body: bytes
    fmt: str | None
    summary: dict[str, str]


def _request_sql(params: dict[str, str], body: bytes) -> bytes:
    query = params.get("query", "").encode()
    sql = query + (b"\n" + body if query and body else body)
    if not sql.strip():
        raise QueryFailed("Code: 62. Empty query")
    return sql


def _split_params(params: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(settings, bound parameters) of a request's URL parameters."""
    settings = {
        k: v for k, v in params.items() if k not in _TRANSPORT_PARAMS and not k.startswith("param_")
    }
    bind = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
    for name in settings:
        if not _SETTING_NAME_RE.match(name):
            raise QueryFailed(f"Code: 115. Unknown setting {name[:100]!r}")
    return settings, bind


def _open(engine: str) -> Any:
    import chdb

    try:
        return chdb.connect(engine)
    except Exception as exc:  # report, the server keeps serving
        raise QueryFailed(f"Code: 1002. cannot open the chDB engine {engine}: {exc}") from exc


def execute_read(
    engine: str,
    params: dict[str, str],
    body: bytes,
    header_format: str | None,
    limits: SqlLimits,
    denied: frozenset[str] = DENIED_FUNCTIONS,
) -> RequestResult:
    """Run one read-only statement on a fresh chDB session of ``engine`` (settings and USE die
    with it). ``params`` are the URL parameters, ``body`` the decoded request body, ``denied``
    the function names ``sql_guard.check_statement`` refuses."""
    try:
        text = _request_sql(params, body).decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise QueryFailed(f"Code: 1002. the query is not UTF-8: {exc}") from exc
    settings, bind = _split_params(params)
    check_settings(settings)
    default_format = params.get("default_format") or header_format or "TabSeparated"
    if not _FORMAT_NAME_RE.match(default_format):
        raise QueryFailed(
            f"Code: 73. Unknown format {default_format[:64]!r}: expected a ClickHouse output "
            "format name such as TabSeparated, JSON, JSONEachRow, CSV, Native. (UNKNOWN_FORMAT)"
        )
    conn = _open(engine)
    try:
        # the request's settings first, the endpoint's limits and readonly=1 after them: the
        # last SET wins, and after readonly=1 no setting can change at all
        asked = {k: v for k, v in settings.items() if k != "readonly"}  # "1", enforced below
        for name, value in [*asked.items(), *limits.settings()]:
            _run(conn, f"SET {name} = {_quote(value)}", "TabSeparated", {})
        if params.get("database"):
            _run(conn, f"USE {_quote_name(params['database'])}", "TabSeparated", {})
        # ClickHouse's parser prints the statement: one statement (or a syntax error), no
        # comments, heredocs as plain strings. That text is checked, and that text runs.
        printed = _run(
            conn, "SELECT formatQuery({q:String})", "TabSeparatedRaw", {"q": _escaped(text)}
        )
        statement = (printed.bytes() or b"").decode("utf-8").strip()
        first = check_statement(statement, denied)
        trailing = _TRAILING_FORMAT_RE.search(statement.encode())
        fmt = trailing.group(1).decode() if trailing else default_format
        result = _run(conn, statement, fmt, bind)
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": "0",
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        # a result set is announced with X-ClickHouse-Format, as ClickHouse does
        return RequestResult(result.bytes() or b"", fmt if first in ROW_KEYWORDS else None, summary)
    finally:
        conn.close()


def execute_any(
    engine: str, params: dict[str, str], body: bytes, get: bool, header_format: str | None
) -> RequestResult:
    """Run one request as a ClickHouse server would for a user without limits (the test
    stand-in, ``read_only=False``): reads, writes, DDL, INSERT data in any format."""
    sql = _request_sql(params, body)
    default_format = params.get("default_format") or header_format or "TabSeparated"
    settings, bind = _split_params(params)
    conn = _open(engine)
    try:
        for name, value in settings.items():
            _run(conn, f"SET {name} = {_quote(value)}", "TabSeparated", {})
        if get:
            # as ClickHouse does for GET: reads only, settings may still change
            _run(conn, "SET readonly = 2", "TabSeparated", {})
        if params.get("database"):
            _run(conn, f"USE {_quote_name(params['database'])}", "TabSeparated", {})
        insert = _INSERT_DATA_RE.match(sql)
        if insert and sql[insert.end() :].strip():
            return _insert_with_data(
                conn, insert.group(1), insert.group(2).decode(), sql[insert.end() :]
            )
        text = sql.decode("utf-8", errors="strict")
        trailing = _TRAILING_FORMAT_RE.search(sql)
        fmt = trailing.group(1).decode() if trailing else default_format
        result = _run(conn, text, fmt, bind)
        produces_rows = first_keyword(text) in ROW_KEYWORDS
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": "0",
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        return RequestResult(result.bytes() or b"", fmt if produces_rows else None, summary)
    except UnicodeDecodeError as exc:
        raise QueryFailed(f"Code: 1002. the query is not UTF-8: {exc}") from exc
    finally:
        conn.close()


def _insert_with_data(conn: Any, head: bytes, fmt: str, data: bytes) -> RequestResult:
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
    return RequestResult(b"", None, summary)


def _run(conn: Any, sql: str, fmt: str, params: dict[str, str]) -> Any:
    try:
        return conn.query(sql, fmt, params=params) if params else conn.query(sql, fmt)
    except Exception as exc:  # chdb raises its own error types; all are query failures
        message = str(exc)
        start = message.find("Code: ")
        raise QueryFailed(message[start:] if start >= 0 else f"Code: 1002. {message}") from exc


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_name(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _escaped(value: str) -> str:
    """``value`` as a query parameter: ClickHouse reads parameters in the TSV escaped format."""
    return (
        value.replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\0", "\\0")
    )
