"""A ClickHouse that accepts the connection and never answers is named in seconds, not 300."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from baton.schemas.errors import AuditUnavailable
from baton.schemas.settings import Settings
from baton.sinks.clickhouse import DEFAULT_TIMEOUT_S, connect

pytestmark = pytest.mark.unit


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts every connection, reads what comes, and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_a_server_that_never_answers_is_named_after_the_timeout(silent_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(AuditUnavailable) as info:
        connect(f"http://u:secret@127.0.0.1:{silent_port}/db", timeout_s=1)
    waited = time.monotonic() - started
    message = str(info.value)
    assert f"127.0.0.1:{silent_port}" in message
    assert "did not answer within 1 s" in message
    assert "BATON_CLICKHOUSE_TIMEOUT_S" in message
    assert "secret" not in message
    # one request's timeout, not clickhouse-connect's 300 s (a retry at most doubles it)
    assert waited < 10, waited


def test_the_timeout_is_a_setting_with_a_bounded_default() -> None:
    assert Settings().clickhouse_timeout_s == DEFAULT_TIMEOUT_S == 30.0
    assert Settings(clickhouse_timeout_s=2.5).clickhouse_timeout_s == 2.5
    with pytest.raises(ValueError, match="clickhouse_timeout_s"):
        Settings(clickhouse_timeout_s=0)


@pytest.mark.parametrize("command", [["sql", "SELECT 1"], ["top", "--once"]], ids=["sql", "top"])
def test_baton_sql_and_top_name_a_silent_server_in_one_line(
    silent_port: int, command: list[str]
) -> None:
    from click.testing import CliRunner

    from baton.cli.main import _register, cli

    _register()
    started = time.monotonic()
    result = CliRunner().invoke(
        cli,
        [*command, "--dsn", f"http://127.0.0.1:{silent_port}/db"],
        env={"BATON_CLICKHOUSE_TIMEOUT_S": "1"},
    )
    assert "Traceback" not in result.output
    assert result.exit_code != 0, result.output
    (line,) = [ln for ln in result.stderr.splitlines() if "did not answer" in ln]
    assert f"127.0.0.1:{silent_port}" in line and "within 1 s" in line
    assert time.monotonic() - started < 15
