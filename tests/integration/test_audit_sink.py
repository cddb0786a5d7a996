"""The audit sink on the real Tansu broker and real chDB: exact audit despite duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError

from baton.schemas.settings import Settings
from baton.sinks.clickhouse import connect
from baton.sinks.schema import migrate
from baton.sinks.sink import AuditSink, run_sink
from baton.streams.net import free_port as _free_port
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


# --------------------------------------------------------------------------- kill -9


class SinkProcess:
    """`baton sink` as a real subprocess (chDB held by it, SQL served on ``port``)."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "-v", "sink", "--sql-port", str(port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.http = wait_for(self._connect, timeout=60, message=self._why)

    def _connect(self) -> Client | None:
        assert self.proc.poll() is None, f"sink exited with {self.proc.returncode}"
        # a plain ping first: clickhouse-connect logs a warning per refused connection
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2):
            pass
        return clickhouse_connect.get_client(host="127.0.0.1", port=self.port)

    def _why(self) -> str:
        return f"the sink's SQL endpoint; log:\n{self.log_path.read_text()[-3000:]}"

    def count(self, final: bool = True) -> int:
        return int(
            self.http.command(
                f"SELECT count() FROM governance.decisions{' FINAL' if final else ''}"
            )
        )

    def kill9(self) -> None:
        self.http.close()
        self.proc.kill()  # SIGKILL: no flush, no commit, no close
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> int:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.log.close()
        return code


@pytest.mark.faults
def test_a_sink_killed_mid_stream_and_restarted_leaves_the_audit_exact(
    broker: Any, chdb_dir: Path, topic_prefix: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "BATON_BOOTSTRAP": broker.bootstrap,
        "BATON_TOPIC_PREFIX": topic_prefix,
        "BATON_PARTITIONS": "4",
        "BATON_CLICKHOUSE_DSN": f"chdb://{chdb_dir}",
        "BATON_SINK_BATCH_SIZE": "250",
        "BATON_SINK_BATCH_TIMEOUT_S": "0.2",
        "BATON_SESSION_TIMEOUT_S": "6",
    }
    decisions = scenario_decisions(runs=600)
    unique = len({d.decision_id for d in decisions})
    first = SinkProcess(env, _free_port(), tmp_path / "sink.log")
    try:
        produce_decisions(
            broker.bootstrap, f"{topic_prefix}gov.decisions", decisions, duplicate_every=10
        )
        # kill -9 while it is part-way through: a batch stored, the next ones in flight.
        # SIGSTOP first, so it cannot finish between our look and the kill
        wait_for(
            lambda: first.count(final=False) > 0,
            timeout=60,
            interval=0.005,
            message="the first batch stored",
        )
        first.proc.send_signal(signal.SIGSTOP)
    finally:
        first.kill9()
    written_before_kill = 0
    second = SinkProcess(env, _free_port(), tmp_path / "sink.log")
    try:
        written_before_kill = second.count(final=False)
        assert written_before_kill < unique, "the first sink finished before the kill"
        wait_for(
            lambda: second.count() == unique,
            timeout=90,
            message=lambda: f"{unique} decisions, FINAL has {second.count()}",
        )
        http = second.http
        assert http.command("SELECT uniqExact(decision_id) FROM governance.decisions") == unique
        # the views saw every copy and still agree with FINAL
        assert http.command("SELECT sum(decisions) FROM governance.run_summary") == unique
        assert http.command(
            "SELECT sum(stops) FROM governance.stops_by_reason_per_minute"
        ) == http.command("SELECT count() FROM governance.decisions FINAL WHERE outcome = 'stop'")
    finally:
        code = second.stop()
    assert code == 0, (tmp_path / "sink.log").read_text()[-3000:]
    assert "audit sink stopped:" in (tmp_path / "sink.log").read_text()


# --------------------------------------------------------------------------- ClickHouse down


class FlakyClickHouse:
    """A real chDB client whose inserts fail while ``down`` is set, as an unreachable server's
    would (clickhouse-connect raises OperationalError)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.down = threading.Event()
        self.refused = 0

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        if self.down.is_set():
            self.refused += 1
            raise OperationalError("HTTPConnectionPool(host='ch', port=8123): Connection refused")
        return self.client.insert(*args, **kwargs)


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def test_while_clickhouse_is_down_the_sink_retries_and_commits_nothing(
    broker: Any, chdb_dir: Path, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}gov.decisions"
    create_topic(broker.bootstrap, topic, partitions=2)
    client = connect(f"chdb://{chdb_dir}")
    migrate(client, ttl_days=30)
    flaky = FlakyClickHouse(client)
    flaky.down.set()
    group = f"{topic_prefix}audit"
    sink = AuditSink(
        {"bootstrap.servers": broker.bootstrap},
        flaky,
        topic,  # type: ignore[arg-type]
        group_id=group,
        batch_size=50,
        batch_timeout_s=0.1,
        consumer_overrides=FAST_GROUP,
        backoff=lambda attempt: 0.2,
    )
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    try:
        decisions = scenario_decisions(runs=20)
        sent = produce_decisions(broker.bootstrap, topic, decisions)
        wait_for(lambda: flaky.refused >= 5, timeout=30, message="inserts refused while down")
        assert _scalar(client, "SELECT count() FROM governance.decisions") == 0
        assert _committed(broker.bootstrap, group, topic, 2) == 0  # nothing acknowledged
        assert sink.stats.last_error and "unreachable" in sink.stats.last_error

        flaky.down.clear()  # ClickHouse is back
        wait_for(
            lambda: _committed(broker.bootstrap, group, topic, 2) == sent,
            timeout=30,
            message="every offset committed once stored",
        )
        assert _scalar(client, "SELECT count() FROM governance.decisions FINAL") == len(decisions)
        # per partition, rows went in in offset order: the first batch (retried many times)
        # holds the lowest offsets
        order = client.query(
            "SELECT audit_partition, groupArray(audit_offset) FROM (SELECT audit_partition, "
            "audit_offset FROM governance.decisions ORDER BY inserted_at, audit_offset) "
            "GROUP BY audit_partition"
        ).result_rows
        for partition, offsets in order:
            assert offsets == sorted(offsets), f"partition {partition} out of order"
        assert sink.stats.retries >= 5 and sink.stats.rows == sent
    finally:
        stop.set()
        thread.join(30)
        client.close()
