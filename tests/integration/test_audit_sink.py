"""The audit sink on the real Tansu broker and real chDB: exact audit despite duplicates."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baton.schemas.settings import Settings
from baton.sinks.clickhouse import connect
from baton.sinks.sink import run_sink
from clickhouse_connect.driver.client import Client

from tests.audit_support import T0, create_topic, produce_decisions, scenario_decisions
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


@pytest.fixture
def sink_env(broker: Any, chdb_dir: Path, topic_prefix: str) -> Iterator[dict[str, Any]]:
    """A running in-process sink on a fresh topic and chDB dir; stopped after the test."""
    topic = f"{topic_prefix}gov.decisions"
    create_topic(broker.bootstrap, topic, partitions=4)
    settings = Settings(
        bootstrap=broker.bootstrap,
        clickhouse_dsn=f"chdb://{chdb_dir}",
        topic_prefix=topic_prefix,
        sink_batch_size=40,
        sink_batch_timeout_s=0.2,
    )
    stop = threading.Event()
    ready = threading.Event()
    box: dict[str, Any] = {}

    def on_ready(sink: Any, server: Any) -> None:
        box["sink"], box["server"] = sink, server
        ready.set()

    def target() -> None:
        try:
            box["stats"] = run_sink(
                settings,
                stop,
                sql_port=0,
                topic=topic,
                consumer_overrides=FAST_GROUP,
                on_ready=on_ready,
            )
        except BaseException as exc:  # surfaced by the test below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=target, name="audit-sink", daemon=True)
    thread.start()
    assert ready.wait(60), "sink did not start"
    assert "error" not in box, box.get("error")
    # same process, same engine: a second client shares it (chDB allows that)
    client = connect(settings.clickhouse_dsn)
    try:
        yield {"topic": topic, "settings": settings, "client": client, "box": box}
    finally:
        client.close()
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "sink did not stop"


def _scalar(client: Client, sql: str) -> Any:
    return client.query(sql).result_rows[0][0]


def test_every_decision_appears_exactly_once_despite_redelivered_copies(
    broker: Any, sink_env: dict[str, Any]
) -> None:
    client: Client = sink_env["client"]
    decisions = scenario_decisions(runs=30)
    unique = {d.decision_id for d in decisions}
    sent = produce_decisions(broker.bootstrap, sink_env["topic"], decisions, duplicate_every=3)
    assert sent > len(unique)

    wait_for(
        lambda: _scalar(client, "SELECT count() FROM governance.decisions FINAL") == len(unique),
        timeout=60,
        message="every decision in the audit",
    )
    wait_for(
        lambda: sink_env["box"]["sink"].stats.rows == sent,
        timeout=20,
        message=lambda: f"sink wrote all {sent} records, stats={sink_env['box']['sink'].stats}",
    )
    stored = {
        r[0]: r
        for r in client.query(
            "SELECT decision_id, run_id, reason, toString(spent_usd), owner "
            "FROM governance.decisions FINAL"
        ).result_rows
    }
    assert set(stored) == unique
    seed_stop = next(
        d for d in decisions if d.run_id == "run_742" and d.reason == "ownership_conflict"
    )
    assert stored[seed_stop.decision_id][1:] == ("run_742", "ownership_conflict", "0.25", "billing")
    # copies were written (no FINAL sees them until a merge) but never counted twice
    assert _scalar(client, "SELECT count() FROM governance.decisions") >= len(unique)
    assert _scalar(client, "SELECT uniqExact(decision_id) FROM governance.decisions") == len(unique)
    assert _scalar(client, "SELECT count() FROM governance.rejected") == 0
    assert _scalar(client, "SELECT min(event_time) FROM governance.decisions").replace(
        tzinfo=None
    ) >= T0.replace(tzinfo=None)
