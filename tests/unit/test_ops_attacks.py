"""The operations surfaces under hostile input: what others wrote or serve never ends the
command with a traceback, and never reaches the operator's terminal as control codes."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.cli.tail_cmds import _render_json
from baton.cli.top_frame import render_frame
from baton.cli.top_metrics import MetricsView, quantile
from baton.processors.metrics_serve import new_registry, serve_metrics
from baton.schemas.errors import ConfigError

pytestmark = pytest.mark.unit

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("host", ["a" * 300, "bad host name", "127.0.0.1\n"])
def test_a_metrics_host_that_cannot_be_listened_on_is_one_config_error(host: str) -> None:
    # a 64+ character label raised UnicodeError (IDNA) past the OSError handler: a traceback
    with pytest.raises(ConfigError, match="BATON_METRICS_HOST"):
        serve_metrics(new_registry(), host, 0)


def _frame(samples: dict[str, list[tuple[dict[str, str], float]]]) -> str:
    now = MetricsView("http://w/metrics", time.monotonic(), samples)
    return render_frame(None, [now], {}, datetime(2026, 3, 1, tzinfo=UTC), "chdb:/x")


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_top_shows_a_sample_that_is_not_a_number_as_a_question_mark(value: float) -> None:
    # int(nan) raised ValueError and int(inf) OverflowError: one hostile /metrics page
    # ended `baton top`
    frame = _frame(
        {
            "baton_consumer_lag": [({"topic": "t", "partition": "0"}, value)],
            "baton_runs_in_memory": [({}, value)],
            "baton_dead_letters_total": [({"kind": "x"}, value)],
        }
    )
    assert "worker lag ? (p0=?)" in frame
    assert "runs in memory ?" in frame and "dead letters ?" in frame


def test_a_histogram_bucket_that_is_not_a_number_is_left_out() -> None:
    buckets = [("abc", 1.0), ("NaN", 1.0), ("0.1", 5.0), ("+Inf", 10.0), ("1", NAN)]
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert "latency" in _frame(
        {"baton_decision_latency_seconds_bucket": [({"le": le}, n) for le, n in buckets]}
    )


def test_tail_json_escapes_what_a_terminal_would_obey_and_keeps_the_document() -> None:
    # orjson escapes C0 controls only: a C1 CSI (U+009B), DEL, bidi overrides and line
    # separators reached the terminal as they were
    doc = {"run_id": "r\u009b2J\u202e\x7f\u2028\U000e0041 é 漢 😀", "n": [1, None]}
    line = _render_json(b"", doc, "[p0@0]", False)
    assert line.isprintable() and "\\u009b" in line and "\\udb40\\udc41" in line
    assert orjson.loads(line) == doc
    raw = _render_json(b"\xff\x1b\xc2\x9b", None, "[p0@0]", False)
    assert raw.isprintable() and orjson.loads(raw) == {"raw": "\ufffd\x1b\x9b"}


def test_doctor_takes_the_dsn_its_own_hints_name(tmp_path: Path) -> None:
    # its hints said "pass --dsn", and doctor answered "No such option: --dsn"
    missing = tmp_path / "nothing"
    _register()
    result = CliRunner().invoke(
        cli, ["doctor", "--bootstrap", "127.0.0.1:1", "--dsn", f"chdb://{missing}"]
    )
    assert result.exit_code == 1, result.output
    assert f"no audit at {missing}" in result.output


def test_a_forged_name_in_a_text_log_message_stays_on_its_line() -> None:
    # the worker logs the operator of every kill switch: "eve\n<a fake line>\x1b]0;..." wrote
    # a forged log line and a terminal title sequence into worker.log
    import logging

    from baton.cli.log_format import TEXT_FORMAT, MaskingFormatter

    record = logging.LogRecord(
        "baton.processors.control",
        logging.WARNING,
        "",
        0,
        "kill_switch run %s by %s",
        ("run-1", "eve\n2026-01-01 WARNING forged\x1b]0;pwned\x07 http://u:pw@h/x"),
        None,
    )
    line = MaskingFormatter(TEXT_FORMAT).format(record)
    assert line.isprintable()
    assert line.endswith("by eve\\x0a2026-01-01 WARNING forged\\x1b]0;pwned\\x07 http://u:***@h/x")


class _FakeMessage:
    def __init__(self, partition: int, offset: int, timestamp: int, eof: bool = False) -> None:
        self._p, self._o, self._t, self._eof = partition, offset, timestamp, eof

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (1, self._t)

    def value(self) -> bytes:
        return f"{self._p}:{self._o}".encode()

    def error(self) -> object | None:
        if not self._eof:
            return None
        return type("Err", (), {"code": staticmethod(lambda: -191)})()


class _FakeConsumer:
    """Partition 0 is fetched far ahead of partition 1, as a broker may hand them out."""

    def __init__(self, per_partition: int) -> None:
        self.pending = {p: list(range(per_partition)) for p in (0, 1)}
        self.paused: set[int] = set()
        self.max_paused = 0

    def poll(self, timeout: float) -> _FakeMessage | None:
        for p in (0, 1):  # partition 0 first whenever it may be read
            if p in self.paused:
                continue
            if self.pending[p]:
                offset = self.pending[p].pop(0)
                return _FakeMessage(p, offset, timestamp=offset * 2 + p)
            if self.pending[p] is not None:
                self.pending[p] = None  # type: ignore[assignment]
                return _FakeMessage(p, -1, 0, eof=True)
        return None

    def pause(self, parts: list) -> None:  # type: ignore[type-arg]
        self.paused |= {tp.partition for tp in parts}
        self.max_paused = max(self.max_paused, len(self.paused))

    def resume(self, parts: list) -> None:  # type: ignore[type-arg]
        self.paused -= {tp.partition for tp in parts}


def test_tail_merges_partitions_by_time_holding_a_bounded_number_of_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # --from-beginning used to read the whole topic into memory and sort it before the
    # first line; the merge holds at most about _HELD records of a partition that runs ahead
    from baton.cli import tail_cmds

    monkeypatch.setattr(tail_cmds, "_HELD", 50)
    consumer = _FakeConsumer(per_partition=250)
    out = list(tail_cmds._merged(consumer, "gov.decisions", {0, 1}, -191))
    assert len(out) == 500
    times = [offset * 2 + p for _value, p, offset in out]
    assert times == sorted(times)
    assert consumer.max_paused == 1  # partition 0 was held back while 1 caught up


def test_top_shows_a_metrics_server_that_does_not_speak_http_as_unreachable() -> None:
    # http.client's BadStatusLine is no OSError or ValueError: it ended `baton top`
    import socket
    import threading

    from baton.cli.top_metrics import scrape

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def garbage() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(b"\x1b[2J\x00\xffnot http\r\n\r\n")
        conn.close()

    threading.Thread(target=garbage, daemon=True).start()
    try:
        view = scrape(f"http://127.0.0.1:{server.getsockname()[1]}/metrics", timeout_s=5)
    finally:
        server.close()
    assert view.error is not None and view.error.startswith("BadStatusLine")
    assert view.error.isprintable()


def test_top_refuses_a_metrics_url_it_cannot_parse_in_one_line() -> None:
    from baton.cli.top_metrics import check_metrics_url

    with pytest.raises(ConfigError, match="expected http://HOST:PORT/metrics"):
        check_metrics_url("http://[::1")
    assert check_metrics_url("http://[::1]:9/metrics") == "http://[::1]:9/metrics"


def test_doctor_gives_a_clickhouse_that_never_answers_a_deadline(tmp_path: Path) -> None:
    # a server that takes the connection and says nothing held doctor for clickhouse-
    # connect's 300 s read timeout; the section now has 3 x --timeout
    import socket

    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(8)
    port = tarpit.getsockname()[1]
    _register()
    started = time.monotonic()
    args = [
        "--timeout",
        "0.5",
        "--bootstrap",
        "127.0.0.1:1",
        "--dsn",
        f"http://127.0.0.1:{port}/db",
    ]
    try:
        result = CliRunner().invoke(cli, ["doctor", *args])
    finally:
        tarpit.close()
    assert result.exit_code == 1, result.output
    assert "✘ clickhouse: no answer within 1.5 s" in result.output
    assert time.monotonic() - started < 30


def test_doctor_names_a_wrong_setting_as_one_not_as_a_bug() -> None:
    _register()
    result = CliRunner().invoke(
        cli, ["doctor", "--bootstrap", "127.0.0.1:1", "--dsn", "clickhouse://x"]
    )
    assert "got 'clickhouse://x' — fix: fix the setting it names" in result.output
    assert "report it" not in result.output
