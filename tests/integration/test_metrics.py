"""Metrics, `baton top` and JSON logs against one real stack: a worker, the audit sink and
the alerter as `baton` subprocesses on the session's Tansu broker, chDB behind the sink."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from baton.streams.embedded import EmbeddedBroker
from baton.streams.net import free_port
from baton.streams.topics import TopicCatalog
from tests.helpers import handoff, wait_for
from tests.stack import (
    BatonProcess,
    Collector,
    EventSender,
    SinkProcess,
    WorkerProcess,
    fresh_topics,
    wait_committed,
    wait_deciding,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
POLICY = """\
multi_agent:
  max_agents_per_run: 4
  max_handoffs: 3
  max_delegation_depth: 3
  shared_max_usd: 30
"""


@dataclass
class MetricsStack:
    bootstrap: str
    catalog: TopicCatalog
    worker: WorkerProcess
    worker_url: str
    sink: SinkProcess
    sink_url: str
    alerts: BatonProcess
    alerts_url: str
    sender: EventSender
    decisions: Collector


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``url``: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def mstack(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MetricsStack]:
    prefix = f"mt{uuid.uuid4().hex[:8]}."
    workdir = tmp_path_factory.mktemp("metrics")
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY)
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    ports = [free_port() for _ in range(3)]
    common = {"BATON_LOG_FORMAT": "json"}
    worker = WorkerProcess(
        broker.bootstrap,
        prefix,
        workdir,
        partitions=PARTITIONS,
        policy=policy,
        extra_env={**common, "BATON_METRICS_PORT": str(ports[0])},
    )
    sink = SinkProcess(
        broker.bootstrap,
        prefix,
        workdir / "chdb",
        workdir / "sink.log",
        partitions=PARTITIONS,
        extra_env={**common, "BATON_METRICS_PORT": str(ports[1])},
    )
    alerts = BatonProcess(
        ["alerts", "--storm-threshold", "0"],
        {
            **common,
            "BATON_BOOTSTRAP": broker.bootstrap,
            "BATON_TOPIC_PREFIX": prefix,
            "BATON_PARTITIONS": str(PARTITIONS),
            "BATON_APP_ID": f"baton-{prefix.rstrip('.')}",
            "BATON_METRICS_PORT": str(ports[2]),
            "BATON_SESSION_TIMEOUT_S": "6",
        },
        workdir / "alerts.log",
    )
    decisions = Collector(broker.bootstrap, catalog.decisions)
    stack = MetricsStack(
        broker.bootstrap,
        catalog,
        worker,
        f"http://127.0.0.1:{ports[0]}/metrics",
        sink,
        f"http://127.0.0.1:{ports[1]}/metrics",
        alerts,
        f"http://127.0.0.1:{ports[2]}/metrics",
        EventSender(broker.bootstrap, catalog.requests),
        decisions,
    )
    try:
        try:
            # generous: three processes start at once on a shared, busy machine
            wait_deciding(broker.bootstrap, catalog, 90)
        except Exception as exc:
            raise AssertionError(f"worker did not start: {exc}\n{worker.log()}") from exc
        try:
            sink.wait_ready(90)
        except Exception as exc:
            raise AssertionError(f"sink did not start: {exc}\n{sink.log()}") from exc
        yield stack
    finally:
        worker.stop()
        sink.stop()
        alerts.stop()
        decisions.close()


def test_worker_counters_move_as_the_traffic_says(mstack: MetricsStack) -> None:
    # the start probe is re-sent every 5 s until a worker answers: a copy still queued would
    # be counted after `before` (CI saw 8 == 7), so read the counters once all is committed
    catalog = mstack.catalog
    group = f"baton-{catalog.prefix.rstrip('.')}"
    wait_committed(mstack.bootstrap, group, catalog.requests, catalog.partitions)
    before = wait_for(lambda: scrape(mstack.worker_url), 10, message="the worker's /metrics")
    run = f"metrics-{uuid.uuid4().hex[:6]}"
    # max_handoffs 3: three allows, then handoff_budget_exceeded twice; two records no JSON
    mstack.sender.send([handoff(run, i, f"t{i}") for i in range(1, 6)])
    mstack.sender.send_raw(b"not json", run.encode())
    mstack.sender.send_raw(b"{also not json", run.encode())
    mstack.decisions.wait_run(run, 5)
    requests = mstack.catalog.requests

    def moved() -> dict | None:
        now = scrape(mstack.worker_url)
        grew = value(now, "baton_events_total", topic=requests) - value(
            before, "baton_events_total", topic=requests
        )
        return now if grew >= 7 else None

    after = wait_for(moved, 10, message="7 more events counted")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("baton_events_total", topic=requests) == 7
    assert delta("baton_decisions_total", outcome="allow", reason="ok") == 3
    assert delta("baton_decisions_total", outcome="stop", reason="handoff_budget_exceeded") == 2
    assert delta("baton_dead_letters_total", kind="not_json") == 2
    assert delta("baton_decision_latency_seconds_count") >= 5
    assert delta("baton_batch_size_count") >= 1
    assert delta("baton_changelog_bytes_total") > 0
    # the gauges are refreshed every second
    wait_for(
        lambda: value(scrape(mstack.worker_url), "baton_runs_in_memory") >= 1,
        10,
        message="runs in memory",
    )
    lag = wait_for(
        lambda: [
            v for (n, labels), v in scrape(mstack.worker_url).items() if n == "baton_consumer_lag"
        ],
        10,
        message="a consumer lag per partition",
    )
    assert len(lag) == 2 * PARTITIONS  # requests and approvals, every partition of each
    assert all(v >= 0 for v in lag)
    # events stamped now are decided well within 10 s: none of them in the +Inf bucket
    # (the start-up probes, sent while the worker was joining, may be)
    assert delta("baton_decision_latency_seconds_bucket", le="10.0") == delta(
        "baton_decision_latency_seconds_count"
    )


def test_sink_and_alerter_count_rows_and_alerts(mstack: MetricsStack) -> None:
    run = f"alerted-{uuid.uuid4().hex[:6]}"
    before_alerts = scrape(mstack.alerts_url)
    mstack.sender.send([handoff(run, i, f"t{i}") for i in range(1, 5)])  # 3 allows, 1 stop
    mstack.decisions.wait_run(run, 4)
    rows = wait_for(
        lambda: value(scrape(mstack.sink_url), "baton_audit_rows_total") >= 4,
        20,
        message="the sink's row counter",
    )
    assert rows
    # a partition's lag is known once the sink wrote a batch from it
    lags = [v for (n, _l), v in scrape(mstack.sink_url).items() if n == "baton_audit_lag"]
    assert lags and all(v >= 0 for v in lags)
    wait_for(
        lambda: (
            value(scrape(mstack.alerts_url), "baton_alerts_sent_total")
            > value(before_alerts, "baton_alerts_sent_total")
        ),
        20,
        message="the stop announced",
    )


def test_top_once_shows_the_stack(mstack: MetricsStack) -> None:
    run = f"top-{uuid.uuid4().hex[:6]}"
    mstack.sender.send([handoff(run, i, f"t{i}") for i in range(1, 5)])  # 3 allows, 1 stop
    mstack.decisions.wait_run(run, 4)

    def frame() -> str | None:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "baton.cli",
                "top",
                "--once",
                "--dsn",
                mstack.sink.dsn,
                "--window",
                "300",
                "--metrics",
                mstack.worker_url,
                "--metrics",
                mstack.sink_url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "BATON_DATA_DIR": str(mstack.sink.log_path.parent / "none")},
        )
        assert out.returncode == 0, out.stderr
        return out.stdout if run in out.stdout else None

    text = wait_for(frame, 30, interval=1, message="the run in baton top's frame")
    assert "\x1b" not in text  # --once: no screen control codes
    assert "stops by reason  handoff_budget_exceeded" in text
    assert "runs with the most handoffs" in text
    line = next(row for row in text.splitlines() if run in row)
    assert line.split()[2:4] == ["0.00", "3"], line  # spent 0, 3 handoffs
    assert "worker lag" in text and "runs in memory" in text and "audit rows" in text


def test_logs_are_one_json_object_per_line(mstack: MetricsStack) -> None:
    for proc in (mstack.worker, mstack.sink, mstack.alerts):
        text = proc.log_path.read_text(errors="replace")
        # the alerter's alerts are its output on stdout (the same file here), not log lines
        lines = [x for x in text.splitlines() if x.strip() and not x.startswith("🛑")]
        assert lines, proc.log_path
        for line in lines:
            obj = json.loads(line)  # a line that is not JSON fails here, naming itself
            assert {"time", "level", "component", "message"} <= obj.keys(), line
        assert any("metrics on http://127.0.0.1:" in json.loads(x)["message"] for x in lines)
