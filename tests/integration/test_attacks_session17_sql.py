"""Session 17's attacks on `baton up`'s SQL endpoint (sinks/sql_http.py), served from the audit
sink's own process, by a client without the token: what a connection may hold before its
credentials are read. Each held a thread of the sink, and http.server reads 100 header lines
of 64 KB each (6.5 MB a connection, held while the client trickles), with no bound on how
many connections: the /metrics endpoint was bounded in session 10, this one was not.

Session 18 (H2), two NITs of those bounds: a slow but legal head left the socket's timeout at
what remained of the head's deadline, so the answer to a client reading at its own pace was
cut off; and the body's first bytes, read ahead with the head, counted toward its 64 KiB."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from baton.sinks import sql_http
from baton.sinks.clickhouse import connect
from baton.sinks.sqlserver import SqlServer, serve_sql

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlServer]:
    client = connect(f"chdb://{tmp_path_factory.mktemp('sql17') / 'chdb'}", create=True)
    with serve_sql(client, port=0) as running:
        yield running


def _select_one(server: SqlServer) -> bytes:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/?query=SELECT+1",
        headers={"X-ClickHouse-User": "baton", "X-ClickHouse-Key": server.token},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read()


def _closed(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closed ``sock`` (an answer and end of file) within ``within_s``."""
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def test_a_request_head_is_read_up_to_its_bound_and_then_closed(server: SqlServer) -> None:
    """99 header lines of 60 KB each, without credentials: the endpoint stops reading at
    64 KiB and closes the connection (it read all 5.9 MB and held them)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    sent = 0
    try:
        for n in range(99):
            sock.sendall(b"X-Pad-%d: " % n + b"a" * 60_000 + b"\r\n")
            sent += 1
    except OSError:  # closed by the server while we were still sending: the bound held
        pass
    assert sent < 99 or _closed(sock, 5.0), "the endpoint read 5.9 MB of headers"
    sock.close()
    assert _select_one(server) == b"1\n"


def test_a_request_head_trickled_is_closed_at_its_deadline(
    server: SqlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request line sent a byte every 0.2 s (each byte well within the 60 s idle timeout)
    held its connection and thread for as long as the client liked; now its head must be in
    within ``HEAD_DEADLINE_S`` of its first byte."""
    monkeypatch.setattr(sql_http, "HEAD_DEADLINE_S", 1.0)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    began, closed = time.monotonic(), False
    try:
        for byte in b"GET /?query=SELECT+1 HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
            if time.monotonic() - began > 6:
                break
    except OSError:
        closed = True
    assert closed or _closed(sock, 1.0), "a trickled head held its connection for 6 s"
    assert time.monotonic() - began < 6
    sock.close()


def test_connections_past_the_bound_are_closed_unread_and_the_endpoint_still_answers(
    server: SqlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections that send nothing each held a thread of the sink for the 60 s idle
    timeout, however many: now at most ``MAX_CONNECTIONS`` are served, the others closed."""
    monkeypatch.setattr(sql_http, "MAX_CONNECTIONS", 8)
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(30)]
    try:
        time.sleep(1.0)
        assert threading.active_count() - before <= 8 + 1, threading.active_count() - before
        assert sum(_closed(s, 0.2) for s in idle) >= 30 - 8
    finally:
        for s in idle:
            s.close()
    time.sleep(0.5)  # their threads end as the sockets close
    assert _select_one(server) == b"1\n"


@pytest.mark.parametrize("path", ["/ping", "/", "/nowhere"])
def test_an_answer_without_the_token_ends_its_connection(server: SqlServer, path: str) -> None:
    """A GET the endpoint answers without the token (a ping, the root, an unknown path) ends
    its connection with the answer (review H4): kept alive, a ping every few seconds held one
    of the MAX_CONNECTIONS slots for ever, and MAX_CONNECTIONS pingers locked out every token
    holder. A token holder's connection is still kept alive."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert _closed(sock, 5.0), f"GET {path} without the token: the connection stayed open"
    kept = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with kept:
        kept.sendall(
            b"GET /?query=SELECT+1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-ClickHouse-User: baton\r\n"
            + f"X-ClickHouse-Key: {server.token}\r\n\r\n".encode()
        )
        assert not _closed(kept, 1.5), "a token holder's connection was closed"


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
