"""`baton doctor` fails when the `baton up` audit sink's inserts fail (session 29, H3).

On a full disk the sink retried every insert for minutes (its /metrics said
``baton_audit_failing 1``) while doctor said "all checks passed": ClickHouse answered reads
and the lag read low."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from baton.cli import stack_record
from baton.cli.doctor_checks import Status, sink_health_checks
from baton.cli.up_children import metrics_url_of, with_metrics_ports

pytestmark = pytest.mark.unit


def _serve(body: bytes) -> tuple[HTTPServer, str]:
    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/metrics"


def _stack(monkeypatch: pytest.MonkeyPatch, url: str | None, live: bool = True) -> None:
    record = SimpleNamespace(
        sink_metrics_url=url, logs={"sink": Path("/d/logs/sink.log")}, live=lambda _d: live
    )
    found = SimpleNamespace(record=record, data_dir=Path("/d"))
    monkeypatch.setattr(stack_record, "find_stack", lambda _d=None: found)


@pytest.mark.parametrize(("failing", "status"), [(1, Status.FAIL), (0, Status.OK)])
def test_the_sinks_failing_flag_decides_the_line(
    monkeypatch: pytest.MonkeyPatch, failing: int, status: Status
) -> None:
    server, url = _serve(f"baton_audit_failing {failing}.0\n".encode())
    try:
        _stack(monkeypatch, url)
        (check,) = sink_health_checks(None, 2.0)
    finally:
        server.shutdown()
    assert check.status == status, check
    if failing:
        assert "inserts into ClickHouse fail" in check.detail and "sink.log" in str(check.hint)


def test_no_line_without_a_live_stack_that_names_its_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    _stack(monkeypatch, None)
    assert sink_health_checks(None, 1.0) == []
    _stack(monkeypatch, "http://127.0.0.1:9/metrics", live=False)
    assert sink_health_checks(None, 1.0) == []


def test_a_sink_whose_metrics_do_not_answer_fails_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from baton.streams.net import free_port

    _stack(monkeypatch, f"http://127.0.0.1:{free_port()}/metrics")
    (check,) = sink_health_checks(None, 1.0)
    assert check.status == Status.FAIL and "did not answer" in check.detail


def test_baton_up_records_the_sinks_metrics_url() -> None:
    children = [("worker", ("worker",)), ("sink", ("sink",)), ("alerts", ("alerts",))]
    given, worker_url = with_metrics_ports(children, 0)
    sink_url = metrics_url_of(given, "sink")
    assert sink_url is not None and sink_url != worker_url
    assert metrics_url_of(with_metrics_ports(children, None)[0], "sink") is None


def test_a_sink_not_connected_yet_is_not_inserting(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `baton sink` serves before its consumer and ClickHouse are up: no
    baton_audit_failing sample. The line read "inserting (baton_audit_failing 0)" (session
    30, H3): a sink retrying its first connection, having inserted nothing."""
    from prometheus_client import CollectorRegistry, generate_latest

    from baton.processors.metrics_audit import SinkMetrics

    registry = CollectorRegistry()
    registry.register(SinkMetrics(lambda: None))
    server, url = _serve(generate_latest(registry))
    try:
        _stack(monkeypatch, url)
        (check,) = sink_health_checks(None, 2.0)
    finally:
        server.shutdown()
    assert check.status == Status.FAIL and "not connected" in check.detail, check
