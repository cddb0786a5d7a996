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
``param_<name>`` bound parameters, plain and lz4 request bodies (``sql_body``: what
``baton sql``, curl and clickhouse-connect send; size-capped after decoding), chunked bodies
(clickhouse-connect's inserts), the response headers clickhouse-connect reads. Each request is
answered by ``sql_http``.

Remaining exposure (what this does not protect):
- Anyone who can read the chDB directory's endpoint file - the same OS user, root, a backup -
  has the token, and anyone who can read the chDB directory itself reads the audit without any
  endpoint; keep the data directory private to the user running Baton.
- The token is printed on ``baton up``'s ready line (stdout): whatever captures that output
  holds it. It changes at each start of the serving process; it is not rotated otherwise.
- No TLS: on the loopback interface nothing leaves the machine, but with ``--sql-host`` on
  another interface the token and the results cross the network in clear text (a warning
  says so). Use a real ClickHouse server with TLS for remote readers.
- Anyone who can connect holds, before the token is read, a thread and at most a 64 KiB
  request head for 10 s (``sql_http.HEAD_*``), among at most 256 connections served at once
  (an answer given without the token, as to a ping, ends its connection):
  clients reconnecting as fast as they are let go can keep those slots busy.
- A token holder can read all of the audit and can make the sink work: each query is bounded
  (``SqlLimits``: execution time, memory, result rows and bytes, concurrent queries, request
  size), but many bounded queries still cost CPU that the sink shares.
- ``read_only=False`` (a stand-in ClickHouse server for tests) runs anything, writes included,
  for a token holder; no ``baton`` command sets it.
Not served (a real server has them): sessions (``session_id`` is ignored), compressed
responses, request bodies in gzip, deflate, zstd or br (refused, HTTP 415), multipart external
data, progress headers, query cancellation.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from baton.schemas.errors import AuditUnavailable, ConfigError
from baton.sinks.clickhouse import ENDPOINT_FILE, endpoint_record
from baton.sinks.sql_exec import SqlLimits
from baton.sinks.sql_guard import DENIED_FUNCTIONS, ENDPOINT_USER, denied_functions, is_loopback
from baton.sinks.sql_http import EndpointConfig, SqlHandler, SqlHttpServer

__all__ = ["SqlLimits", "SqlServer", "serve_sql"]  # SqlLimits lives in sql_exec

log = logging.getLogger(__name__)


@dataclass
class SqlServer:
    """A running SQL endpoint; ``close()`` stops it and removes its endpoint file.

    ``url`` has no credentials; ``dsn`` is the URL with them (``http://baton:TOKEN@…``)."""

    host: str
    port: int
    engine_path: Path
    token: str = field(repr=False)
    _httpd: SqlHttpServer = field(repr=False)
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
            # another writer's file (a list, a FIFO) must not keep the server from closing
            if endpoint_record(endpoint).get("pid") == os.getpid():
                endpoint.unlink()
        except OSError:
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
    handler = type("_Handler", (SqlHandler,), {"timeout": limits.socket_timeout_s})
    try:
        httpd = SqlHttpServer((host, port), handler)
    except OSError as exc:
        raise AuditUnavailable(
            f"cannot serve SQL on {host}:{port}: {exc.strerror or exc}; "
            "choose another port (baton sink --sql-port, 0 = any free port)"
        ) from exc
    bound_port = int(httpd.server_address[1])
    # set before the first request is served; the Origin check needs the port actually bound
    handler.config = config = EndpointConfig(
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
