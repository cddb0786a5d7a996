"""The SQL endpoint probe of `baton up` and `baton doctor`: answers only with the right token."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from baton.cli.sql_probe import sql_endpoint_answers

pytestmark = pytest.mark.unit

TOKEN = "s3cret"


class _Endpoint(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        wanted = "Basic " + base64.b64encode(f"baton:{TOKEN}".encode()).decode()
        ok = self.headers.get("Authorization") == wanted and self.path == "/?query=SELECT+1"
        self.send_response(200 if ok else 401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def port() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_endpoint_answers_with_its_token_and_not_without(port: int) -> None:
    assert sql_endpoint_answers(f"http://baton:{TOKEN}@127.0.0.1:{port}", 2)
    assert not sql_endpoint_answers(f"http://baton:wrong@127.0.0.1:{port}", 2)


@pytest.mark.parametrize(
    "dsn",
    ["garbage", "http://baton:t@127.0.0.1", "http://baton:t@127.0.0.1:port", "http://b:t@[::1"],
)
def test_a_dsn_without_a_usable_host_and_port_is_no_answer_never_an_error(dsn: str) -> None:
    assert not sql_endpoint_answers(dsn, 1)


def test_a_port_that_does_not_speak_http_is_no_answer() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def babble() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"\x00\xffnot http at all\r\n" * 100)

        threading.Thread(target=babble, daemon=True).start()
        assert not sql_endpoint_answers(f"http://b:t@127.0.0.1:{listener.getsockname()[1]}", 2)
