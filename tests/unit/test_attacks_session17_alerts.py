"""Session 17's attacks on the alert webhook (sinks/alert_post.py): an endpoint that answers a
byte at a time. urllib's timeout bounds each read, not the post: a post of timeout 2 s took
31 s, and the sender thread, its queue (then dropping alerts) and the alerter's commits
waited as long as the endpoint liked."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from baton.sinks.alert_post import post_once

pytestmark = pytest.mark.unit


@pytest.fixture
def trickling() -> Iterator[str]:
    """A webhook URL whose server reads the post, then answers 200 a byte every 0.25 s
    (each byte well within any read timeout; the answer whole after ~15 s)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            answer = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 60 + b"\r\nContent-Length: 0\r\n\r\n"
            for byte in answer:
                if done.is_set():
                    return
                try:
                    conn.send(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.25)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/services/T000/B000/XXXXSECRET"
    finally:
        done.set()
        server.close()
        thread.join(5)


def test_a_webhook_trickling_its_answer_is_cut_at_the_posts_timeout(trickling: str) -> None:
    began = time.monotonic()
    outcome = post_once(trickling, "🛑 Multi-Agent run r stopped: killed", 1.0)
    took = time.monotonic() - began
    assert not outcome.ok and outcome.retry, outcome
    assert took < 3.0, f"the post took {took:.1f} s with a timeout of 1 s"
    assert "1 s" in outcome.problem and "XXXXSECRET" not in outcome.problem, outcome.problem
