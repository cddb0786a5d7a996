"""The audit sink under faults: killed with SIGKILL mid-insert, ClickHouse unreachable."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from baton.schemas.decision import Decision
from baton.streams.net import free_port
from tests.audit_support import (
    SinkProcess,
    create_topic,
    hostile_records,
    produce_records,
    scenario_decisions,
    story_run,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.faults


def _sink_env(broker: Any, topic_prefix: str, dsn: str, batch_size: int) -> dict[str, str]:
    return {
        **os.environ,
        "BATON_BOOTSTRAP": broker.bootstrap,
        "BATON_TOPIC_PREFIX": topic_prefix,
        "BATON_PARTITIONS": "4",
        "BATON_CLICKHOUSE_DSN": dsn,
        "BATON_SINK_BATCH_SIZE": str(batch_size),
        "BATON_SINK_BATCH_TIMEOUT_S": "0.2",
        "BATON_SESSION_TIMEOUT_S": "6",
    }


def _traffic(
    decisions: list[Decision], every: int, duplicate_every: int = 0
) -> tuple[list[tuple[bytes | None, bytes | None]], int]:
    """``decisions`` (keyed by run; every ``duplicate_every``-th twice, as a redelivery),
    with a hostile record after every ``every``-th; returns the records and how many of
    them are hostile (each is one governance.rejected row)."""
    hostile = hostile_records(replace(decisions[0], decided_at=datetime.now(UTC)))
    records: list[tuple[bytes | None, bytes | None]] = []
    bad = 0
    for i, d in enumerate(decisions):
        copies = 2 if duplicate_every and i % duplicate_every == 0 else 1
        records.extend([(d.run_id.encode(), d.to_json())] * copies)
        if i % every == every - 1:
            key, value, _ = hostile[bad % len(hostile)]
            records.append((key, value))
            bad += 1
    return records, bad


def _recent_scenario(runs: int) -> list[Decision]:
    return scenario_decisions(runs=runs, start=datetime.now(UTC) - timedelta(minutes=10))


def test_a_sink_killed_mid_insert_and_restarted_leaves_the_audit_exact(
    broker: Any, chdb_dir: Path, topic_prefix: str, tmp_path: Path
) -> None:
    env = _sink_env(broker, topic_prefix, f"chdb://{chdb_dir}", batch_size=250)
    decisions = _recent_scenario(runs=600)
    unique = len({d.decision_id for d in decisions})
    records, bad = _traffic(decisions, every=40, duplicate_every=10)
    log = tmp_path / "sink.log"
    # a refusal only the server knows, found by splitting inserts; added before the sink holds
    # the directory (its SQL endpoint is read-only)
    subprocess.run([sys.executable, "-c", _CONSTRAIN, f"chdb://{chdb_dir}"], check=True, timeout=60)
    first = SinkProcess(env, free_port(), log)
    try:
        produce_records(broker.bootstrap, f"{topic_prefix}gov.decisions", records)
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
    second = SinkProcess(env, free_port(), log)
    try:
        assert second.count(final=False) < unique, "the first sink finished before the kill"
        wait_for(
            lambda: second.count() == unique and second.count(table="rejected") == bad,
            timeout=90,
            message=lambda: (
                f"{unique} decisions and {bad} rejected, FINAL has {second.count()} and "
                f"{second.count(table='rejected')}"
            ),
        )
        http = second.http
        assert http.command("SELECT uniqExact(decision_id) FROM governance.decisions") == unique
        # the views saw every copy and still agree with FINAL
        assert http.command("SELECT sum(decisions) FROM governance.run_summary") == unique
        assert http.command(
            "SELECT sum(stops) FROM governance.stops_by_reason_per_minute"
        ) == http.command("SELECT count() FROM governance.decisions FINAL WHERE outcome = 'stop'")
        kinds = dict(
            http.query(
                "SELECT error_kind, count() FROM governance.rejected FINAL GROUP BY error_kind"
            ).result_rows
        )
        assert set(kinds) == {kind for _, _, kind in hostile_records(decisions[0])}
        assert second.proc.poll() is None
    finally:
        code = second.stop()
    assert code == 0, second.output()[-3000:]
    assert "audit sink stopped:" in second.output()


#: the audit schema with a CHECK constraint only the server knows (so the sink's split also
#: runs), written into the chDB directory
_CONSTRAIN = """
import sys
from baton.sinks.clickhouse import connect
from baton.sinks.schema import migrate
client = connect(sys.argv[1], follow_endpoint=False, create=True)
migrate(client, 365)
client.command(
    "ALTER TABLE governance.decisions ADD CONSTRAINT IF NOT EXISTS no_evil CHECK tenant != 'evil'"
)
"""

#: a ClickHouse server for the test: chDB behind Baton's SQL endpoint (its writable test
#: stand-in, with a token: the sink inserts through it), in its own process so that killing
#: it cuts every connection (a server thread in the test process would keep serving the
#: sink's open keep-alive connections after it stopped listening)
_SERVER = (
    _CONSTRAIN
    + """
import time
from baton.sinks.sqlserver import serve_sql
serve_sql(client, "127.0.0.1", int(sys.argv[2]), read_only=False, token=sys.argv[3])
print("serving", flush=True)
time.sleep(3600)
"""
)


class ClickHouseServer:
    """The server above on ``port``, started and killed at will."""

    def __init__(self, chdb_dir: Path, port: int, log_path: Path) -> None:
        token = secrets.token_urlsafe(24)
        self.args = [sys.executable, "-c", _SERVER, f"chdb://{chdb_dir}", str(port), token]
        self.port = port
        self.dsn = f"http://baton:{token}@127.0.0.1:{port}"
        self.label = f"http://baton:***@127.0.0.1:{port}"  # as errors show it
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._ping, timeout=30, message=lambda: self.log_path.read_text()[-2000:])

    def _ping(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "the server exited"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2):
            return True

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def count(self, table: str) -> int:
        import clickhouse_connect

        client = clickhouse_connect.get_client(dsn=self.dsn)
        try:
            return int(client.command(f"SELECT count() FROM governance.{table} FINAL"))
        finally:
            client.close()


def test_clickhouse_unreachable_for_a_while_then_everything_is_written(
    broker: Any, chdb_dir: Path, topic_prefix: str, tmp_path: Path
) -> None:
    server = ClickHouseServer(chdb_dir, free_port(), tmp_path / "server.log")
    address = server.label
    topic = f"{topic_prefix}gov.decisions"
    create_topic(broker.bootstrap, topic, partitions=4)
    env = _sink_env(broker, topic_prefix, server.dsn, batch_size=100)
    sink = SinkProcess(env, None, tmp_path / "sink.log")

    def stored(good: int, bad: int) -> bool:
        return server.count("decisions") == good and server.count("rejected") == bad

    try:
        decisions = _recent_scenario(runs=30)
        first, bad_first = _traffic(decisions, every=10)
        produce_records(broker.bootstrap, topic, first)
        # nothing listens on the port: the sink says so, naming the address, and retries
        wait_for(
            lambda: sink.output().count(f"cannot reach ClickHouse at {address}") >= 3,
            timeout=30,
            message=lambda: f"retries naming {address}; log:\n{sink.output()[-2000:]}",
        )
        assert sink.proc.poll() is None

        server.start()  # the server comes up: the sink migrates and writes everything
        good_first = len({d.decision_id for d in decisions})
        wait_for(
            lambda: stored(good_first, bad_first),
            timeout=60,
            message=lambda: f"{good_first} decisions stored; log:\n{sink.output()[-2000:]}",
        )

        server.kill()  # down again, while the sink runs
        start = datetime.now(UTC) - timedelta(minutes=1)
        late = [d for i in range(5) for d in story_run(f"run_late_{i}", "acme", start)]
        second, bad_second = _traffic(late, every=10)
        produce_records(broker.bootstrap, topic, second)
        wait_for(
            lambda: sink.output().count(f"ClickHouse at {address} is unreachable while") >= 2,
            timeout=30,
            message=lambda: f"insert retries naming {address}; log:\n{sink.output()[-2000:]}",
        )
        assert sink.proc.poll() is None

        server.start()  # back: the batch held meanwhile goes in, nothing lost
        good_all = good_first + len({d.decision_id for d in late})
        wait_for(
            lambda: stored(good_all, bad_first + bad_second),
            timeout=60,
            message=lambda: f"{good_all} decisions stored; log:\n{sink.output()[-2000:]}",
        )
        assert sink.proc.poll() is None
    finally:
        code = sink.stop()
        server.kill()
    assert code == 0, sink.output()[-3000:]
