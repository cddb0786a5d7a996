"""Session 17's attacks on the alert webhook (sinks/alert_post.py): an endpoint that answers a
byte at a time. urllib's timeout bounds each read, not the post: a post of timeout 2 s took
31 s, and the sender thread, its queue (then dropping alerts) and the alerter's commits
waited as long as the endpoint liked."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.sinks.alert_post import post_once
from tests.tls_support import make_pki, server_context

pytestmark = pytest.mark.unit


@pytest.fixture(params=["http", "https"])
def trickling(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A webhook URL whose server reads the post, then answers 200 a byte every 0.25 s
    (each byte well within any read timeout; the answer whole after ~15 s); over TLS too
    (review H4: the deadline shut the plain socket TLS had detached, and a trickled https
    answer held a post of timeout 1 s for 6.7 s)."""
    tls = request.param == "https"
    context = None
    if tls:
        pki = make_pki(tmp_path / "pki")
        context = server_context(pki, require_client_cert=False)
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("no_proxy", "*")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        if context is not None:
            try:
                conn = context.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
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
        host = "localhost" if tls else "127.0.0.1"
        yield f"{request.param}://{host}:{server.getsockname()[1]}/services/T000/B000/XXXXSECRET"
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


def test_a_forged_stop_under_a_real_stops_id_cannot_hide_it() -> None:
    """Decision ids are computable (run, request id, the request's digest: all on
    gov.handoff.requests): a writer of gov.stops sent a harmless-looking stop under the id
    of the stop the worker was about to publish, and the real one was taken for its
    redelivery, never announced. A stop is a repeat only when it shows the same: one
    showing what the real one shows announced exactly that."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from baton.schemas.decision import Decision, Outcome, Phase
    from baton.sinks.alerts import StopAlerter, stop_line

    now = datetime.now(UTC)
    real = Decision(
        decision_id="d-1",
        request_id="req-1",
        run_id="run_742",
        tenant="acme",
        phase=Phase.PRE_HANDOFF,
        outcome=Outcome.STOP,
        reason="killed",
        from_agent="planner",
        to_agent="billing_agent",
        task_id="refund_check",
        event_time=now,
        decided_at=now,
    )
    forged = replace(real, reason="handoff_budget_exceeded", to_agent="researcher")
    alerter = StopAlerter(storm_threshold=0)
    assert [m.text for m in alerter.offer(forged, now=0.0)] == [stop_line(forged)]
    assert [m.text for m in alerter.offer(real, now=1.0)] == [stop_line(real)]
    # the worker's redelivery of it (the same record, or one decided again later) is not
    assert alerter.offer(replace(real, decided_at=now), now=2.0) == []
    assert alerter.duplicates == 1
