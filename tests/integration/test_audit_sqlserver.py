"""The ClickHouse HTTP subset served for a chDB directory: clickhouse-connect, curl and
`baton sql` from another process all work against it."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from baton.sinks.clickhouse import ENDPOINT_FILE, connect
from baton.sinks.schema import migrate
from baton.sinks.sink import AuditBatch, write_batch
from baton.sinks.sqlserver import SqlServer, serve_sql
from tests.audit_support import scenario_decisions

pytestmark = pytest.mark.integration


@pytest.fixture
def served(chdb_dir: Path) -> Iterator[tuple[Client, SqlServer]]:
    client = connect(f"chdb://{chdb_dir}")
    server = None
    try:
        migrate(client, ttl_days=30)
        batch = AuditBatch("gov.decisions")
        for i, decision in enumerate(scenario_decisions(runs=4)):
            batch.add(0, i, decision.to_json())
        write_batch(client, batch)
        server = serve_sql(client, port=0)
        yield client, server
    finally:
        if server is not None:
            server.close()
        client.close()


def _http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_clickhouse_connect_http_client_works_unchanged(served: tuple[Client, SqlServer]) -> None:
    _, server = served
    http = clickhouse_connect.get_client(host="127.0.0.1", port=server.port)
    try:
        result = http.query(
            "SELECT run_id, spent_usd, decided_at FROM governance.decisions FINAL "
            "WHERE run_id = {run:String} ORDER BY decided_at",
            parameters={"run": "run_742"},
        )
        assert [r[0] for r in result.result_rows] == ["run_742"] * 3
        assert result.result_rows[-1][1] == Decimal("0.25")
        assert isinstance(result.result_rows[0][2], datetime)
        assert (
            http.command("SELECT count() FROM governance.decisions FINAL") == 3 + 3 * 8 + 7
        )  # run_742, three story runs, one limits run
        # DDL and a compressed Native insert (the client's defaults) through the endpoint
        http.command(
            "CREATE TABLE default.notes (id UInt32, text String) ENGINE = MergeTree ORDER BY id"
        )
        http.insert("default.notes", [[1, "ünïcode"], [2, "b"]], column_names=["id", "text"])
        assert http.query("SELECT text FROM default.notes ORDER BY id").result_rows == [
            ("ünïcode",),
            ("b",),
        ]
        with pytest.raises(DatabaseError, match="Code: 62"):
            http.query("SELEC 1")
    finally:
        http.close()


def test_curl_get_and_post_with_formats(served: tuple[Client, SqlServer]) -> None:
    _, server = served
    get = subprocess.run(
        [
            "curl",
            "-sS",
            f"{server.url}/?query=SELECT%20count()%20FROM%20governance.decisions"
            "%20FINAL%20WHERE%20outcome%20%3D%20'stop'",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert get.stdout == "4\n"  # TabSeparated, ClickHouse's default
    post = subprocess.run(
        [
            "curl",
            "-sS",
            "--data-binary",
            "SELECT reason, count() AS n FROM governance.decisions FINAL WHERE outcome = 'stop' "
            "GROUP BY reason ORDER BY reason",
            f"{server.url}/?default_format=JSONEachRow",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    reasons = (
        "approval_denied",
        "delegation_depth_exceeded",
        "handoff_budget_exceeded",
        "ownership_conflict",
    )
    assert [json.loads(line) for line in post.stdout.splitlines()] == [
        {"reason": r, "n": 1} for r in reasons
    ]
    assert (
        subprocess.run(
            ["curl", "-sS", f"{server.url}/ping"], capture_output=True, text=True, timeout=30
        ).stdout
        == "Ok.\n"
    )


def test_get_is_read_only_and_errors_carry_clickhouse_codes(
    served: tuple[Client, SqlServer],
) -> None:
    _, server = served
    status, headers, body = _http(f"{server.url}/?query=DROP%20TABLE%20governance.decisions")
    assert status == 403 and headers["X-ClickHouse-Exception-Code"] == "164"
    assert b"readonly" in body
    status, headers, body = _http(f"{server.url}/?query=SELECT%20*%20FROM%20nowhere")
    assert status == 404 and headers["X-ClickHouse-Exception-Code"] == "60"


def test_settings_parameters_and_gzip_bodies(served: tuple[Client, SqlServer]) -> None:
    _, server = served
    query = b"SELECT {n:UInt8} + 1 AS x, getSetting('max_threads') AS t FORMAT JSONEachRow"
    status, _, body = _http(
        f"{server.url}/?param_n=41&max_threads=3",
        gzip.compress(query),
        {"Content-Encoding": "gzip"},
    )
    assert status == 200, body
    assert json.loads(body) == {"x": 42, "t": 3}


def test_an_engine_held_here_is_queried_from_another_process_through_the_endpoint(
    served: tuple[Client, SqlServer], chdb_dir: Path
) -> None:
    _, server = served
    record = json.loads((chdb_dir / ENDPOINT_FILE).read_text())
    assert record == {"url": server.url, "pid": os.getpid(), "started": record["started"]}
    # the same DSN the holder uses: the other process cannot open the directory, so it
    # follows the endpoint file
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "baton.cli",
            "sql",
            "--dsn",
            f"chdb://{chdb_dir}",
            "--format",
            "csv",
            "SELECT run_id, reason FROM governance.decisions FINAL "
            "WHERE outcome = 'stop' ORDER BY run_id, reason",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "run_id,reason",
        "run_0002,approval_denied",
        "run_0002,delegation_depth_exceeded",
        "run_0002,handoff_budget_exceeded",
        "run_742,ownership_conflict",
    ]


def test_closing_the_endpoint_unregisters_it(chdb_dir: Path) -> None:
    client = connect(f"chdb://{chdb_dir}")
    try:
        server = serve_sql(client, port=0)
        assert (chdb_dir / ENDPOINT_FILE).exists()
        server.close()
        assert not (chdb_dir / ENDPOINT_FILE).exists()
    finally:
        client.close()


def test_a_directory_held_without_an_endpoint_is_reported_with_the_holder(chdb_dir: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, clickhouse_connect; c = clickhouse_connect.get_client(interface='chdb', "
            f"path={str(chdb_dir)!r}); print('open', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        result = subprocess.run(
            [sys.executable, "-m", "baton.cli", "sql", "--dsn", f"chdb://{chdb_dir}", "SELECT 1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 5
        assert (
            f"the chDB directory {chdb_dir} is held by another process (pid {holder.pid})"
            in result.stderr
        )
    finally:
        holder.kill()
        holder.wait(10)
