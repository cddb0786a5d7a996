"""The pure parts of metrics, `baton top` and JSON logs: counting, clamping, parsing, masking."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from baton.cli.log_format import JsonFormatter, LogOutput, MaskingFormatter
from baton.cli.top_metrics import check_metrics_url, quantile
from baton.cli.up_children import with_metrics_ports
from baton.processors.batch import DeadLetter, InputRecord, Outputs
from baton.processors.metrics import LATENCY_CAP_S, WorkerMetrics
from baton.schemas.errors import ConfigError
from baton.schemas.settings import Settings

pytestmark = pytest.mark.unit


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.collect()
        for s in family.samples
    }


@pytest.mark.parametrize(
    ("given", "port"), [("off", None), ("OFF", None), ("", None), ("0", 0), (9100, 9100)]
)
def test_metrics_port_is_a_port_or_off(given: object, port: int | None) -> None:
    assert Settings(metrics_port=given).metrics_port_number == port


@pytest.mark.parametrize("bad", ["65536", "-1", "x", "9" * 60, "١٢٣", "80 80", "0x50"])
def test_a_metrics_port_that_is_not_one_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="expected a port 0-65535 or off"):
        Settings(metrics_port=bad)


def test_a_batch_is_counted_by_topic_outcome_reason_and_kind() -> None:
    from tests.audit_support import scenario_decisions

    metrics = WorkerMetrics("w1")
    decisions = scenario_decisions(runs=3)
    out = Outputs(
        decisions=[(0, d) for d in decisions],
        dead_letters=[DeadLetter(None, b"{}", "missing_key")] * 2,
    )
    out.encoded[b"run"] = b"x" * 100
    out.changed[b"run"] = (0, None)
    records = [InputRecord("req", 0, i, b"k", b"v") for i in range(7)]
    metrics.batch(records, out, 0.5)
    got = samples(metrics)
    assert got[("baton_events_total", (("topic", "req"),))] == 7
    stops = sum(1 for d in decisions if d.outcome == "stop")
    counted = sum(v for (n, lab), v in got.items() if n == "baton_decisions_total")
    assert counted == len(decisions)
    assert (
        sum(
            v
            for (n, lab), v in got.items()
            if n == "baton_decisions_total" and ("outcome", "stop") in lab
        )
        == stops
    )
    assert got[("baton_dead_letters_total", (("kind", "missing_key"),))] == 2
    assert got[("baton_changelog_bytes_total", ())] == 100
    assert got[("baton_batch_size_count", ())] == 1
    assert got[("baton_batch_size_sum", ())] == 7


def test_a_producer_clock_far_off_cannot_wreck_the_latency() -> None:
    metrics = WorkerMetrics("w1")
    records = [
        InputRecord("req", 0, 0, b"k", b"v", None, 4_000_000_000.0),  # year 2096: "negative"
        InputRecord("req", 0, 1, b"k", b"v", None, 1.0),  # 1970: decades late
        InputRecord("req", 0, 2, b"k", b"v", None, None),  # no timestamp: not measured
    ]
    metrics.batch(records, Outputs(), 0.0)
    got = samples(metrics)
    assert got[("baton_decision_latency_seconds_count", ())] == 2
    assert got[("baton_decision_latency_seconds_sum", ())] == LATENCY_CAP_S
    assert got[("baton_decision_latency_seconds_bucket", (("le", "0.001"),))] == 1


def test_counting_never_raises_into_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    metrics = WorkerMetrics("w1")
    metrics.batch([object()], None, 0.0)  # whatever is wrong, the batch is already published
    assert "could not count a batch" in caplog.text


def test_quantile_of_a_cumulative_histogram() -> None:
    buckets = [("0.01", 50.0), ("0.1", 90.0), ("1.0", 100.0), ("+Inf", 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.01)
    assert quantile(buckets, 0.9) == pytest.approx(0.1)
    assert quantile(buckets, 0.95) == pytest.approx(0.55)
    assert quantile([("+Inf", 0.0)], 0.5) is None


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/metrics", "http:///metrics", "x"])
def test_top_reads_http_endpoints_only(url: str) -> None:
    with pytest.raises(ConfigError, match="expected http://HOST:PORT/metrics"):
        check_metrics_url(url)


def test_up_gives_every_child_its_own_metrics_port_or_none() -> None:
    children = [("worker", ("worker",)), ("sink", ("sink",)), ("alerts", ("alerts",))]
    off, url = with_metrics_ports(children, None)
    assert url is None and all(args[-2:] == ("--metrics-port", "off") for _n, args in off)
    given, url = with_metrics_ports(children, 9100)
    assert url == "http://127.0.0.1:9100/metrics"
    ports = [args[-1] for _n, args in given]
    assert ports[0] == "9100" and len(set(ports)) == 3
    picked, url = with_metrics_ports(children, 0)
    assert url is not None and url.endswith(f":{picked[0][1][-1]}/metrics")


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("baton.x", logging.WARNING, "f.py", 1, message, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_a_json_log_line_is_one_object_with_the_run_and_no_password() -> None:
    line = JsonFormatter("sink").format(
        _record("cannot reach https://baton:s3cret@ch:8443/db\nsecond line", run_id="run-7")
    )
    assert "\n" not in line and "s3cret" not in line
    obj = json.loads(line)
    assert obj["component"] == "sink" and obj["level"] == "warning" and obj["run_id"] == "run-7"
    assert obj["message"].startswith("cannot reach https://baton:***@ch:8443/db")
    assert obj["time"].endswith("+00:00")


def test_a_huge_message_or_run_id_is_cut() -> None:
    line = JsonFormatter("worker").format(_record("x" * 100_000, run_id="r" * 60_000))
    assert len(line) < 10_000
    assert json.loads(line)["message"].endswith("(100000 characters)")


def test_text_logs_mask_passwords_too() -> None:
    text = MaskingFormatter("%(message)s").format(_record("dsn http://u:pw@h:8123/"))
    assert text == "dsn http://u:***@h:8123/"


def test_status_lines_follow_the_format(capsys: pytest.CaptureFixture[str]) -> None:
    LogOutput("json", "up").say("baton up: ready http://u:pw@h/")
    LogOutput("text", "up").say("baton up: ready http://u:pw@h/")
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert json.loads(lines[0])["message"] == "baton up: ready http://u:***@h/"
    assert lines[1] == "baton up: ready http://u:***@h/"
    assert out == ""  # status lines go to stderr; stdout is the command's output


def test_control_records_and_sweep_expiries_are_counted_too() -> None:
    from tests.audit_support import scenario_decisions

    metrics = WorkerMetrics("w1")
    decision = scenario_decisions(runs=1)[0]
    metrics.queued(decision)  # a kill switch or policy record, published with the next batch
    metrics.queued(DeadLetter(None, b"{}", "unsigned"))
    swept = Outputs(decisions=[(0, decision)])
    swept.encoded[b"run"] = b"x" * 10
    swept.changed[b"run"] = (0, None)
    metrics.swept(swept)
    got = samples(metrics)
    key = ("baton_decisions_total", (("outcome", decision.outcome), ("reason", decision.reason)))
    assert got[key] == 2
    assert got[("baton_dead_letters_total", (("kind", "unsigned"),))] == 1
    assert got[("baton_changelog_bytes_total", ())] == 10


def test_a_long_running_commands_error_is_a_json_line_too(tmp_path: object) -> None:
    import subprocess

    from baton.streams.net import free_port

    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "baton.cli", "worker", "--bootstrap", dead, "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    assert done.returncode == 4, done.stderr
    (line,) = done.stderr.splitlines()
    obj = json.loads(line)
    assert obj["level"] == "error" and obj["component"] == "worker"
    assert obj["message"].startswith(f"baton: error: cannot reach Kafka at {dead}")
