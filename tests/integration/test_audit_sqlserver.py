"""The SQL endpoint served for a chDB directory, through a real endpoint on a real engine:
clickhouse-connect, curl and `baton sql` read with this start's token; writes, file and URL
reads, missing tokens and other sites' pages are refused, and the audit stays as it was."""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import clickhouse_connect
import lz4.frame
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from baton.sinks.clickhouse import ENDPOINT_FILE, connect
from baton.sinks.schema import migrate
from baton.sinks.sink import AuditBatch, write_batch
from baton.sinks.sqlserver import SqlLimits, SqlServer, serve_sql
from tests.audit_support import scenario_decisions
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

#: rows of scenario_decisions(runs=4): run_742, three story runs, one limits run
ROWS = 3 + 3 * 8 + 7


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path]]:
    """One chDB engine for the module (a process opens one path at a time), holding the
    scenario's audit in ``<data dir>/chdb``, and a scratch table the holder writes to."""
    data_dir = tmp_path_factory.mktemp("data")
    client = connect(f"chdb://{data_dir / 'chdb'}", create=True)
    try:
        migrate(client, ttl_days=30)
        batch = AuditBatch("gov.decisions")
        for i, decision in enumerate(scenario_decisions(runs=4)):
            batch.add(0, i, decision.to_json())
        write_batch(client, batch)
        client.command("CREATE TABLE default.scratch (id UInt32) ENGINE = MergeTree ORDER BY id")
        yield client, data_dir
    finally:
        client.close()


@pytest.fixture
def served(engine: tuple[Client, Path]) -> Iterator[SqlServer]:
    client, _ = engine
    server = serve_sql(client, port=0)
    try:
        yield server
    finally:
        server.close()


def _http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _post(server: SqlServer, sql: str, path: str = "/", **headers: str) -> tuple[int, Any, bytes]:
    return _http(server.url + path, sql.encode(), {**_basic("baton", server.token), **headers})


def _audit_rows(client: Client) -> int:
    return int(client.command("SELECT count() FROM governance.decisions"))


def _curl(*args: str) -> str:
    return subprocess.run(
        ["curl", "-sS", *args], capture_output=True, text=True, timeout=30, check=True
    ).stdout


# ------------------------------------------------------------------------------ reading


def test_clickhouse_connect_reads_with_the_dsn_or_user_and_password(served: SqlServer) -> None:
    assert served.dsn == f"http://baton:{served.token}@127.0.0.1:{served.port}"
    by_dsn = clickhouse_connect.get_client(dsn=served.dsn)
    by_name = clickhouse_connect.get_client(
        host="127.0.0.1", port=served.port, username="baton", password=served.token
    )
    try:
        result = by_dsn.query(
            "SELECT run_id, spent_usd, decided_at FROM governance.decisions FINAL "
            "WHERE run_id = {run:String} ORDER BY decided_at",
            parameters={"run": "run_742"},
        )
        assert [r[0] for r in result.result_rows] == ["run_742"] * 3
        assert result.result_rows[-1][1] == Decimal("0.25")
        assert isinstance(result.result_rows[0][2], datetime)
        assert by_name.command("SELECT count() FROM governance.decisions FINAL") == ROWS
        with pytest.raises(DatabaseError, match="Code: 62"):
            by_dsn.query("SELEC 1")
    finally:
        by_dsn.close()
        by_name.close()


def test_curl_reads_with_url_credentials_basic_auth_or_clickhouse_headers(
    served: SqlServer,
) -> None:
    stops = "SELECT+count()+FROM+governance.decisions+FINAL+WHERE+outcome+%3D+'stop'"
    assert _curl(f"{served.dsn}/?query={stops}") == "4\n"  # the URL form, as printed
    assert _curl("-u", f"baton:{served.token}", f"{served.url}/?query={stops}") == "4\n"
    assert _curl(f"{served.url}/?query={stops}&user=baton&password={served.token}") == "4\n"
    headers = ["-H", "X-ClickHouse-User: baton", "-H", f"X-ClickHouse-Key: {served.token}"]
    assert _curl(*headers, f"{served.url}/?query={stops}") == "4\n"
    posted = _curl(
        "-u",
        f"baton:{served.token}",
        "--data-binary",
        "SELECT reason, count() AS n FROM governance.decisions FINAL WHERE outcome = 'stop' "
        "GROUP BY reason ORDER BY reason",
        f"{served.url}/?default_format=JSONEachRow",
    )
    reasons = [json.loads(line)["reason"] for line in posted.splitlines()]
    assert reasons == [
        "approval_denied",
        "delegation_depth_exceeded",
        "handoff_budget_exceeded",
        "ownership_conflict",
    ]
    assert _curl(f"{served.url}/ping") == "Ok.\n"  # as ClickHouse: no credentials needed


def test_allowed_settings_parameters_and_lz4_bodies(served: SqlServer) -> None:
    query = b"SELECT {n:UInt8} + 1 AS x, toUInt64(7) AS big FORMAT JSONEachRow"
    status, _, body = _http(
        f"{served.url}/?param_n=41&output_format_json_quote_64bit_integers=0",
        lz4.frame.compress(query),
        {"Content-Encoding": "lz4", **_basic("baton", served.token)},
    )
    assert status == 200, body
    assert json.loads(body) == {"x": 42, "big": 7}


def test_a_body_no_client_of_ours_sends_is_refused_by_its_encoding(served: SqlServer) -> None:
    status, headers, body = _http(
        served.url + "/",
        gzip.compress(b"SELECT 1"),
        {"Content-Encoding": "gzip", **_basic("baton", served.token)},
    )
    assert status == 415, body
    assert headers["X-ClickHouse-Exception-Code"] == "48"
    assert b"unsupported Content-Encoding 'gzip'" in body and b"lz4" in body
    status, _, body = _http(
        served.url + "/",
        b"\x04\x22\x4d\x18garbage",
        {"Content-Encoding": "lz4", **_basic("baton", served.token)},
    )
    assert status == 500 and b"cannot decode the request body" in body, body
    assert _post(served, "SELECT 1")[0] == 200  # the endpoint serves on


# ------------------------------------------------------------------------------ refusing


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("DROP TABLE governance.decisions", 164),
        ("TRUNCATE TABLE governance.decisions", 164),
        ("ALTER TABLE governance.decisions DELETE WHERE 1", 164),
        ("ALTER TABLE governance.decisions UPDATE reason = 'ok' WHERE 1", 164),
        (
            "INSERT INTO governance.decisions (decision_id, run_id, outcome, reason) "
            "VALUES ('forged', 'run_742', 'allow', 'ok')",
            164,
        ),
        ("CREATE TABLE default.evil (x UInt8) ENGINE = Memory", 164),
        ("RENAME TABLE governance.decisions TO governance.gone", 164),
        ("OPTIMIZE TABLE governance.decisions FINAL", 164),
        ("SYSTEM STOP MERGES", 164),
        ("KILL QUERY WHERE 1", 164),
        ("SET readonly = 0", 164),
        ("SELECT count() FROM governance.decisions SETTINGS readonly = 0", 164),
        ("SELECT 1; DROP TABLE governance.decisions", 62),
        ("/* SELECT */ DROP TABLE governance.decisions", 164),
    ],
)
def test_writes_are_refused_and_the_audit_is_unchanged(
    served: SqlServer, engine: tuple[Client, Path], sql: str, code: int
) -> None:
    client, _ = engine
    status, headers, body = _post(served, sql)
    assert status == (400 if code == 62 else 403), body
    assert headers["X-ClickHouse-Exception-Code"] == str(code), body
    assert body.startswith(f"Code: {code}.".encode())
    # the same statement in a GET's ?query= is refused the same way
    get = _http(
        f"{served.url}/?query={urllib.request.quote(sql)}", None, _basic("baton", served.token)
    )
    assert get[0] == status
    assert _audit_rows(client) == ROWS
    assert client.command("EXISTS TABLE default.evil") == 0


def test_clickhouse_connect_cannot_write_and_readonly_does_not_leak_to_the_holder(
    served: SqlServer, engine: tuple[Client, Path]
) -> None:
    client, _ = engine
    http = clickhouse_connect.get_client(dsn=served.dsn)
    try:
        with pytest.raises(DatabaseError, match="Code: 164"):
            http.insert("default.scratch", [[1]], column_names=["id"])
        with pytest.raises(DatabaseError, match="Code: 164"):
            http.command("DROP TABLE governance.decisions")
        assert http.command("SELECT getSetting('readonly')") == 1
    finally:
        http.close()
    # the sink's own session is not read-only: each request had its own
    client.command("INSERT INTO default.scratch VALUES (1)")
    assert client.command("SELECT count() FROM default.scratch") >= 1


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT file('/etc/passwd')",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
        "SELECT `file`('/etc/passwd')",
        "SELECT \"file\"('/etc/passwd')",
        "select /* a comment */ FILE ('/etc/passwd')",
        "SELECT `\\x66ile`('/etc/passwd')",  # ClickHouse decodes the name to file
        "SELECT \"\\x66\\x69le\"('/etc/passwd')",
        "SELECT $$a$$, file($$/etc/passwd$$)",
        "SELECT length(file('/etc/passwd')) FROM numbers(1)",
        "EXPLAIN SYNTAX SELECT file('/etc/passwd')",
        "DESCRIBE TABLE file('/etc/passwd', 'LineAsString')",
        "WITH x AS (SELECT * FROM file('/etc/passwd', 'LineAsString')) SELECT * FROM x",
        "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
        "SELECT * FROM s3('http://127.0.0.1:9/bucket/x.csv')",
        "SELECT * FROM remote('127.0.0.1:9', system.one)",
        "SELECT * FROM mysql('127.0.0.1:9', 'db', 't', 'u', 'p')",
        "SELECT * FROM executable('id', 'TSV', 'x String')",
        "SELECT * FROM filesystem('/etc')",
        "SELECT * FROM python(anything)",
    ],
)
def test_files_urls_other_servers_and_programs_are_refused(served: SqlServer, sql: str) -> None:
    status, headers, body = _post(served, sql)
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "497"), body
    assert b"refused" in body and b"root:" not in body


def test_into_outfile_is_refused_and_writes_nothing(served: SqlServer, tmp_path: Path) -> None:
    target = tmp_path / "stolen.csv"
    for sql in (
        f"SELECT * FROM governance.decisions INTO OUTFILE '{target}' FORMAT CSV",
        f"SELECT 1 INTO OUTFILE '{target}' APPEND",
    ):
        status, headers, body = _post(served, sql)
        assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "497"), body
        assert b"INTO OUTFILE refused" in body
    assert not target.exists()


def test_readonly_and_limits_cannot_be_lifted_through_url_parameters(served: SqlServer) -> None:
    for params in ("readonly=0", "readonly=2", "max_execution_time=0", "max_result_rows=0"):
        status, headers, body = _post(served, "SELECT 1", f"/?{params}")
        assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "164"), (params, body)
        assert f"'{params.split('=')[0]}'".encode() in body
    status, _, body = _post(served, "SELECT getSetting('readonly')", "/?readonly=1")
    assert (status, body) == (200, b"1\n")  # asking for what is enforced anyway is fine


def test_a_query_over_the_concurrency_cap_waits_then_gets_503(engine: tuple[Client, Path]) -> None:
    client, _ = engine
    limits = SqlLimits(max_concurrent_queries=1, queue_wait_s=0.3)
    with serve_sql(client, port=0, limits=limits) as server:
        slow = threading.Thread(target=_post, args=(server, "SELECT sleep(2)"))
        slow.start()
        try:
            busy = wait_for(
                lambda: (r := _post(server, "SELECT 1"))[0] == 503 and r,
                timeout=10,
                message="a second query refused while the first runs",
            )
            assert busy[1]["X-ClickHouse-Exception-Code"] == "202"
            assert b"Too many simultaneous queries" in busy[2]
        finally:
            slow.join(10)
        assert _post(server, "SELECT 1")[:1] == (200,)


def test_a_malformed_chunked_body_is_a_400_and_the_endpoint_serves_on(served: SqlServer) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as conn:
        auth = _basic("baton", served.token)["Authorization"]
        conn.sendall(
            f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
            "Transfer-Encoding: chunked\r\n\r\nzz\r\nSELECT 1\r\n0\r\n\r\n".encode()
        )
        assert conn.recv(100).startswith(b"HTTP/1.1 400")
    assert _post(served, "SELECT 1")[0] == 200


def test_limits_stop_heavy_queries_and_huge_bodies(engine: tuple[Client, Path]) -> None:
    client, _ = engine
    limits = SqlLimits(max_execution_time_s=1, max_result_rows=1000, max_request_bytes=4096)
    with serve_sql(client, port=0, limits=limits) as server:
        status, headers, body = _post(server, "SELECT count() FROM system.numbers")
        assert headers["X-ClickHouse-Exception-Code"] == "159", body  # TIMEOUT_EXCEEDED
        status, headers, body = _post(server, "SELECT number FROM numbers(5000)")
        assert headers["X-ClickHouse-Exception-Code"] == "396", body  # TOO_MANY_ROWS
        status, _, body = _post(server, "SELECT 1 " + " " * 5000)
        assert status == 413 and b"4096 bytes" in body
        bomb = lz4.frame.compress(b"SELECT 1" + b" " * 500_000)  # ~2 KB that inflates to 500 KB
        assert len(bomb) < 4096
        status, _, body = _http(
            server.url + "/",
            bomb,
            {"Content-Encoding": "lz4", **_basic("baton", server.token)},
        )
        assert status == 413 and b"decompressed" in body, body


# ------------------------------------------------------------------------------ who asks


@pytest.mark.parametrize(
    "how",
    ["none", "wrong token", "wrong user", "wrong URL password", "two ways", "bearer", "bad base64"],
)
def test_missing_or_wrong_credentials_get_401(served: SqlServer, how: str) -> None:
    token = served.token
    headers = {
        "none": {},
        "wrong token": _basic("baton", token[:-1] + ("A" if token[-1] != "A" else "B")),
        "wrong user": _basic("default", token),
        "two ways": {**_basic("baton", token), "X-ClickHouse-User": "baton"},
        "bearer": {"Authorization": f"Bearer {token}"},
        "bad base64": {"Authorization": "Basic !!!"},
    }.get(how, {})
    query = "/?user=baton&password=nope" if how == "wrong URL password" else "/"
    status, response_headers, body = _http(
        served.url + query, b"DROP TABLE governance.decisions", headers
    )
    assert status == 401, body
    assert response_headers["X-ClickHouse-Exception-Code"] == "516"
    assert body.startswith(b"Code: 516. DB::Exception: baton: Authentication failed")
    assert token.encode() not in body


def test_another_sites_page_is_refused_even_with_the_token(served: SqlServer) -> None:
    for extra in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": f"http://127.0.0.1:{served.port + 1}"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": f"rebound.evil.example:{served.port}"},  # DNS rebinding
    ):
        status, headers, body = _post(served, "DROP TABLE governance.decisions", **extra)
        # refused before the statement is even looked at (that refusal would be 164)
        assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "497"), (extra, body)
    # a browser page without the token gets the same answer, not a login prompt
    status, headers, _ = _http(
        served.url + "/", b"SELECT 1", {"Origin": "https://evil.example", "Sec-Fetch-Site": "x"}
    )
    assert status == 403 and "WWW-Authenticate" not in headers
    same = _post(served, "SELECT 1", Origin=f"http://localhost:{served.port}")
    assert same[0] == 200  # this endpoint's own origin


# ------------------------------------------------------------------------------ discovery


def test_the_endpoint_file_is_private_and_holds_the_dsn(
    served: SqlServer, engine: tuple[Client, Path]
) -> None:
    _, data_dir = engine
    path = data_dir / "chdb" / ENDPOINT_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    record = json.loads(path.read_text())
    assert record == {
        "url": served.url,
        "dsn": served.dsn,
        "pid": os.getpid(),
        "started": record["started"],
    }
    assert served.token not in repr(served)


def _baton(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "baton.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_baton_sql_finds_the_dsn_and_token_in_the_data_dir(
    served: SqlServer, engine: tuple[Client, Path], tmp_path: Path
) -> None:
    _, data_dir = engine
    query = (
        "SELECT run_id, reason FROM governance.decisions FINAL "
        "WHERE outcome = 'stop' ORDER BY run_id, reason"
    )
    expected = [
        "run_id,reason",
        "run_0002,approval_denied",
        "run_0002,delegation_depth_exceeded",
        "run_0002,handoff_budget_exceeded",
        "run_742,ownership_conflict",
    ]
    env = {"BATON_CLICKHOUSE_DSN": "http://127.0.0.1:9/unused"}
    by_flag = _baton("sql", "--data-dir", str(data_dir), "-f", "csv", query, env=env)
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_flag.stdout.splitlines() == expected
    by_env = _baton("sql", "-f", "csv", query, env={"BATON_DATA_DIR": str(data_dir)})
    assert by_env.stdout.splitlines() == expected, by_env.stderr
    # the chDB directory the holder uses: the other process follows its endpoint file
    by_dsn = _baton("sql", "--dsn", f"chdb://{data_dir / 'chdb'}", "-f", "csv", query)
    assert by_dsn.stdout.splitlines() == expected, by_dsn.stderr
    trace = _baton("trace", "run_742", "--data-dir", str(data_dir))
    assert trace.returncode == 0 and "ownership_conflict" in trace.stdout, trace.stderr
    rules = _baton("alerts", "check", "--data-dir", str(data_dir))
    assert rules.returncode in (0, 1) and "ERROR" not in rules.stdout, rules.stdout + rules.stderr
    # and what it finds there is the read-only endpoint
    drop = _baton("sql", "--data-dir", str(data_dir), "DROP TABLE governance.decisions")
    assert drop.returncode == 2 and "Code: 164" in drop.stderr, drop.stderr  # refused: bad input
    assert served.token not in drop.stderr
    # the token of a dead endpoint, or none at all, is never guessed
    nowhere = _baton("sql", "--data-dir", str(tmp_path), "SELECT 1")
    assert nowhere.returncode == 2 and f"nor {tmp_path}/chdb" in nowhere.stderr  # StackNotFound


def test_closing_the_endpoint_unregisters_it(engine: tuple[Client, Path]) -> None:
    client, data_dir = engine
    server = serve_sql(client, port=0)
    assert (data_dir / "chdb" / ENDPOINT_FILE).exists()
    server.close()
    assert not (data_dir / "chdb" / ENDPOINT_FILE).exists()


def test_each_start_has_its_own_token(engine: tuple[Client, Path]) -> None:
    client, _ = engine
    with serve_sql(client, port=0) as first:
        old = first.dsn
    with serve_sql(client, port=0) as second:
        assert second.token != first.token and len(second.token) >= 40
        status, _, _ = _http(f"{second.url}/?query=SELECT+1", None, _basic("baton", first.token))
        assert status == 401, old


def test_the_writable_test_stand_in_still_needs_the_token(engine: tuple[Client, Path]) -> None:
    client, _ = engine
    with serve_sql(client, port=0, read_only=False) as server:
        assert _http(f"{server.url}/", b"INSERT INTO default.scratch VALUES (7)")[0] == 401
        http = clickhouse_connect.get_client(dsn=server.dsn)
        try:
            http.insert("default.scratch", [[8]], column_names=["id"])
            assert http.command("SELECT count() FROM default.scratch WHERE id = 8") == 1
        finally:
            http.close()


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
        result = _baton("sql", "--dsn", f"chdb://{chdb_dir}", "SELECT 1")
        assert result.returncode == 5
        assert (
            f"the chDB directory {chdb_dir} is held by another process (pid {holder.pid})"
            in result.stderr
        )
    finally:
        holder.kill()
        holder.wait(10)
