"""Session 18 (H2): two NITs of the SQL endpoint's request-head bounds (sinks/sql_http.py,
session 17): a slow but legal head left the socket's timeout at what remained of the head's
deadline, so the answer to a client reading at its own pace was cut off; and the body's first
bytes, read ahead with the head, counted toward the head's 64 KiB, so a legal head of about
60 KiB sent with its body was refused 431."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from baton.sinks import sql_http
from baton.sinks.clickhouse import connect
from baton.sinks.sqlserver import SqlServer, serve_sql

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlServer]:
    client = connect(f"chdb://{tmp_path_factory.mktemp('sql18') / 'chdb'}", create=True)
    with serve_sql(client, port=0) as running:
        yield running


def _answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """The status line and the body of one answer (its whole Content-Length, or what came
    before the server closed the connection)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data.split(b"\r\n")[0], b""
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[
            1
        ]
    )
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        body += chunk
    return head.split(b"\r\n")[0], body


def test_a_slow_legal_head_still_gets_its_whole_answer(
    server: SqlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head in within its deadline (1 s here), 0.15 s to spare; the answer, 16 MB, is read
    after a pause of 1 s: the server's sends waited at most the 0.15 s and it hung up."""
    monkeypatch.setattr(sql_http, "HEAD_DEADLINE_S", 1.0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", server.port))
    with sock:
        query = "SELECT+repeat('a',1000)+FROM+numbers(16000)"
        sock.sendall(b"G")
        time.sleep(0.85)
        sock.sendall(
            f"ET /?query={query} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-ClickHouse-User: baton\r\n"
            f"X-ClickHouse-Key: {server.token}\r\n\r\n".encode()
        )
        time.sleep(1.0)
        status, body = _answer(sock)
    assert status == b"HTTP/1.1 200 OK"
    assert len(body) == 16000 * 1001, len(body)


def test_a_legal_head_near_the_bound_sent_with_its_body_is_answered(server: SqlServer) -> None:
    """A head of 60 KiB (under the 64 KiB bound) and an 8 KiB body in one write: the body's
    first bytes came in with the head's last read and the head was refused 431. A head past
    the bound still is."""
    body = b"SELECT 1" + b" " * 8192
    pad = b"a" * (60 * 1024 - 200)
    head = (
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-ClickHouse-User: baton\r\n"
        + f"X-ClickHouse-Key: {server.token}\r\nContent-Length: {len(body)}\r\n".encode()
        + b"X-Pad: "
        + pad
        + b"\r\n\r\n"
    )
    assert len(head) < sql_http.HEAD_MAX_BYTES < len(head) + len(body)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body)
        assert _answer(sock) == (b"HTTP/1.1 200 OK", b"1\n")
    # the read-ahead counts only for a head that ended within the bound: one of 66 KiB with
    # its body behind it is still refused 431 (or its connection closed)
    over = head.replace(pad, b"a" * (66 * 1024))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            sock.sendall(over + body)
            status, _ = _answer(sock)
        except OSError:
            status = b"closed"
    assert status in (b"closed", b"") or b" 431 " in status, status
