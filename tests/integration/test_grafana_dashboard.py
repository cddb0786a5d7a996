"""The Grafana dashboard (deploy/grafana/baton.json) and `baton top`'s audit queries, checked
against the code: well-formed, every metric it plots is one Baton serves, every ClickHouse
query it holds runs on the audit schema (real chDB, migrated) and finds the audit's rows."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from baton.cli.top_audit import read_audit
from baton.cli.top_frame import render_frame
from baton.processors.batch import DeadLetter, InputRecord, Outputs
from baton.processors.metrics import WorkerMetrics
from baton.processors.metrics_audit import AlertMetrics, SinkMetrics
from baton.sinks.alerts import AlertStats, StopAlerter
from baton.sinks.clickhouse import connect
from baton.sinks.schema import migrate
from baton.sinks.sink import AuditBatch, SinkStats, write_batch
from tests.audit_support import scenario_decisions

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "baton.json"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
#: the grafana-clickhouse-datasource macros the dashboard uses, as the plugin expands them
#: (over a window that holds the test's rows)
MACROS = {
    r"\$__timeFilter\((\w+)\)": r"\1 >= now() - INTERVAL 1 DAY AND \1 <= now() + INTERVAL 1 HOUR",
    r"\$__fromTime": "(now() - INTERVAL 1 DAY)",
    r"\$__toTime": "(now() + INTERVAL 1 HOUR)",
}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def served_metric_names() -> set[str]:
    """Every sample name a worker, sink and alerter serve (with _total, _bucket ...)."""
    alerts = AlertMetrics()
    alerts.watch(AlertStats(), StopAlerter(), None)
    stats = SinkStats()
    stats.lag[0] = 1
    worker = WorkerMetrics("w")
    worker.set_state({("t", 0): 0}, 1, 1, "p")
    decision = scenario_decisions(runs=1)[0]
    out = Outputs(decisions=[(0, decision)], dead_letters=[DeadLetter(b"k", b"{}", "not_json")])
    worker.batch([InputRecord("t", 0, 0, b"k", b"v", None, 1.0)], out, 0.01)
    names: set[str] = set()
    for collector in (worker, SinkMetrics(lambda: stats), alerts):
        for family in collector.collect():
            names.add(family.name)
            names.update(s.name for s in family.samples)
    return names


def queries(kind: str) -> Iterator[tuple[str, str]]:
    """(panel title, query) of every target of ``kind`` ("expr" or "rawSql")."""
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", ()):
            if kind in target:
                yield panel["title"], target[kind]


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    client = connect(f"chdb://{tmp_path_factory.mktemp('dash') / 'chdb'}", create=True)
    try:
        migrate(client, ttl_days=3650)
        batch = AuditBatch("gov.decisions")
        start = datetime.now(UTC) - timedelta(minutes=10)
        for i, decision in enumerate(scenario_decisions(runs=9, start=start)):
            batch.add(0, i, decision.to_json())
        write_batch(client, batch)
        yield client
    finally:
        client.close()


def test_dashboard_is_well_formed() -> None:
    dash = dashboard()
    assert dash["title"] and dash["uid"] == "baton-governance"
    sources = {v["name"]: v["query"] for v in dash["templating"]["list"]}
    assert sources == {"prometheus": "prometheus", "clickhouse": "grafana-clickhouse-datasource"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        uid = panel["datasource"]["uid"]
        assert uid in ("${prometheus}", "${clickhouse}"), panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert ("expr" in target) == (uid == "${prometheus}"), panel["title"]


def test_every_plotted_metric_is_served_and_documented() -> None:
    served = served_metric_names()
    documented = set(re.findall(r"`(baton_[a-z_]+)`", DOCS.read_text()))
    plotted = {
        (title, name)
        for title, expr in queries("expr")
        for name in re.findall(r"\b(baton_[a-z_]+)", expr)
    }
    assert plotted, "no Prometheus panels"
    assert {name for _t, name in plotted} - served == set(), [
        (t, n) for t, n in plotted if n not in served
    ]
    families = {n for n in served if not n.endswith(("_bucket", "_count", "_sum", "_created"))}
    # every family is in docs/metrics.md (counters under their _total name)
    missing = {n for n in families if n not in documented and f"{n}_total" not in documented}
    assert missing == set(), f"metrics not in docs/metrics.md: {sorted(missing)}"


def test_every_clickhouse_query_runs_on_the_audit_schema(audit: Client) -> None:
    ran = []
    for title, sql in queries("rawSql"):
        expanded = sql
        for macro, value in MACROS.items():
            expanded = re.sub(macro, value, expanded)
        assert "$__" not in expanded, f"{title}: a macro this test does not know: {expanded}"
        rows = audit.query(expanded).result_rows
        ran.append((title, len(rows)))
    found = dict(ran)
    assert len(found) >= 6
    for title in (
        "Stops by reason per minute",
        "Decisions per minute by outcome",
        "Runs with the most spend",
        "Runs with the most handoffs",
    ):
        assert found[title] > 0, f"{title} found none of the audit's rows: {ran}"


def test_top_reads_the_audit_and_escapes_what_it_prints(audit: Client) -> None:
    view = read_audit(lambda sql: list(audit.query(sql).result_rows), 3600, 5)
    assert view.decisions > 0
    assert dict(view.stops), "the scenario has stops"
    assert len(view.by_spend) == 5 and len(view.by_handoffs) == 5
    hostile = ("run\x1b[2J\u202eevil\n" + "x" * 60_000, "acme", 1.5, 3, "stop", "killed")
    view.by_spend[0] = hostile
    text = render_frame(view, [], {}, datetime.now(UTC), "chdb:/x")
    assert "\x1b" not in text and "\u202e" not in text
    assert max(len(line) for line in text.splitlines()) < 300
    assert "run\\x1b[2J\\u202eevil" in text
