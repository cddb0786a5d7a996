"""The SQL endpoint's gatekeeping as pure functions: the token, browsers, settings and the
statement as ClickHouse printed it. (The real endpoint: tests/integration/test_audit_sqlserver.)"""

from __future__ import annotations

import base64

import pytest

from baton.sinks.sql_guard import (
    DENIED_FUNCTIONS,
    SAFE_TABLE_FUNCTIONS,
    USER_SETTINGS,
    Refused,
    check_browser,
    check_credentials,
    check_settings,
    check_statement,
    denied_functions,
    is_loopback,
)

pytestmark = pytest.mark.unit

TOKEN = "k3y-0f-THIS-start_abcdefghijklmnopqrstuvw"


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _refused(call, *args, **kwargs) -> Refused:  # type: ignore[no-untyped-def]
    with pytest.raises(Refused) as caught:
        call(*args, **kwargs)
    return caught.value


# ------------------------------------------------------------------------------ credentials


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        (_basic("baton", TOKEN), {}),
        ({"X-ClickHouse-User": "baton", "X-ClickHouse-Key": TOKEN}, {}),
        ({}, {"user": "baton", "password": TOKEN}),
        (_basic("baton", TOKEN) | {"authorization": "ignored: header names are exact"}, {}),
    ],
)
def test_the_token_is_taken_the_three_ways_clickhouse_takes_a_password(
    headers: dict[str, str], params: dict[str, str]
) -> None:
    check_credentials(headers, params, TOKEN)


@pytest.mark.parametrize(
    ("headers", "params", "says"),
    [
        ({}, {}, "no credentials"),
        (_basic("baton", TOKEN[:-1]), {}, "wrong user or token in the Authorization header"),
        (_basic("baton", TOKEN + "x"), {}, "wrong user or token"),
        (_basic("default", TOKEN), {}, "wrong user or token"),
        (_basic("baton", ""), {}, "wrong user or token"),
        ({"X-ClickHouse-User": "baton"}, {}, "wrong user or token in X-ClickHouse-User/-Key"),
        ({}, {"password": TOKEN}, "wrong user or token in user/password URL parameters"),
        ({}, {"user": "baton", "password": ""}, "wrong user or token"),
        (_basic("baton", TOKEN), {"user": "baton", "password": TOKEN}, "more than one way"),
        ({"Authorization": f"Bearer {TOKEN}"}, {}, "uses 'Bearer', expected Basic"),
        ({"Authorization": "Basic !!!not-base64"}, {}, "not Basic base64(user:password)"),
        ({"Authorization": "Basic " + base64.b64encode(b"\xff\xfe").decode()}, {}, "not Basic"),
        (
            {"Authorization": "Basic " + base64.b64encode(TOKEN.encode()).decode()},
            {},
            "no ':' between user and password",
        ),
        (_basic("baton", "x" * 60_000), {}, "wrong user or token"),
    ],
)
def test_missing_wrong_or_ambiguous_credentials_are_a_401_that_never_echoes_them(
    headers: dict[str, str], params: dict[str, str], says: str
) -> None:
    refused = _refused(check_credentials, headers, params, TOKEN)
    assert (refused.status, refused.code) == (401, 516)
    assert str(refused).startswith("Code: 516. DB::Exception: baton: Authentication failed: ")
    assert str(refused).endswith("(AUTHENTICATION_FAILED)")
    assert says in str(refused)
    assert TOKEN not in str(refused) and "x" * 100 not in str(refused)


# ------------------------------------------------------------------------------ browsers


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Host": "127.0.0.1:8123"},
        {"Host": "localhost:8123"},
        {"Host": "[::1]:8123"},
        {"Host": "127.0.0.2"},
        {"Origin": "http://127.0.0.1:8123", "Host": "127.0.0.1:8123"},
        {"Origin": "http://localhost:8123"},
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed into the address bar by the operator
    ],
)
def test_programs_and_this_endpoints_own_origin_pass(headers: dict[str, str]) -> None:
    check_browser(headers, 8123, loopback_only=True)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"Origin": "https://evil.example"}, "cross-origin request refused"),
        ({"Origin": "null"}, "cross-origin request refused"),  # sandboxed iframes, file://
        ({"Origin": "http://127.0.0.1:8124"}, "cross-origin"),  # another local port's page
        ({"Origin": "http://127.0.0.1"}, "cross-origin"),
        ({"Origin": "https://127.0.0.1:8123"}, "cross-origin"),
        ({"Origin": "http://127.0.0.1:99999"}, "cross-origin"),  # a port that cannot be
        ({"Origin": "http://evil.example:8123"}, "cross-origin"),
        ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site: cross-site"),
        ({"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site: same-site"),
        ({"Host": "evil.example:8123"}, "DNS rebinding"),
        ({"Host": "127.0.0.1.nip.io:8123"}, "DNS rebinding"),
        ({"Host": ""}, "DNS rebinding"),
    ],
)
def test_another_sites_page_is_refused(headers: dict[str, str], says: str) -> None:
    refused = _refused(check_browser, headers, 8123, loopback_only=True)
    assert (refused.status, refused.code) == (403, 497)
    assert says in str(refused)


def test_a_bind_beyond_loopback_takes_any_host_name_but_still_no_foreign_origin() -> None:
    check_browser({"Host": "audit.internal:8123"}, 8123, loopback_only=False)
    refused = _refused(check_browser, {"Origin": "https://evil.example"}, 8123, False)
    assert refused.code == 497


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("127.0.0.1.evil.example", False),
        ("", False),
    ],
)
def test_loopback_names(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# ------------------------------------------------------------------------------ settings


def test_output_settings_and_readonly_1_pass_as_url_parameters() -> None:
    check_settings({name: "1" for name in USER_SETTINGS} | {"readonly": "1"})


@pytest.mark.parametrize(
    "name",
    [
        "readonly",
        "max_execution_time",
        "max_result_rows",
        "max_memory_usage",
        "allow_introspection_functions",
        "output_format_schema",  # writes a schema file: why the list is exact, not a prefix
        "format_schema",
        "dialect",
    ],
)
def test_a_setting_that_could_lift_a_limit_or_touch_a_file_is_refused(name: str) -> None:
    refused = _refused(check_settings, {name: "0"})
    assert (refused.status, refused.code) == (403, 164)
    assert f"'{name}'" in str(refused)


# ------------------------------------------------------------------------------ statements


@pytest.mark.parametrize(
    ("formatted", "first"),
    [
        ("SELECT 1", "SELECT"),
        ("SELECT count()\nFROM governance.decisions\nFINAL\nFORMAT JSON", "SELECT"),
        ("WITH\n    1 AS a\nSELECT a", "WITH"),
        ("SELECT 1\nUNION ALL\nSELECT 2", "SELECT"),
        ("(SELECT 1)", "SELECT"),
        ("SHOW TABLES FROM governance", "SHOW"),
        ("DESCRIBE TABLE governance.decisions", "DESCRIBE"),
        ("EXISTS TABLE governance.decisions", "EXISTS"),
        ("EXPLAIN\nSELECT 1", "EXPLAIN"),
        ("SELECT 1;", "SELECT"),
        ("SELECT 'file(\\'/etc/passwd\\')', ' ; DROP TABLE t'", "SELECT"),  # text, not code
        ("SELECT file\nFROM t", "SELECT"),  # a column named file, not a call
        ("SELECT format('{} {}', a, b), numbers_mt(3) FROM numbers(10)", "SELECT"),
        ("SELECT name, value, readonly\nFROM system.settings", "SELECT"),  # clickhouse-connect
        ("SELECT getSetting('readonly')", "SELECT"),
        ("SELECT {run:String} AS r", "SELECT"),
        ("SELECT URLHierarchy(u), urlDecode(u) FROM t", "SELECT"),
    ],
)
def test_reads_pass(formatted: str, first: str) -> None:
    assert check_statement(formatted, denied_functions(["file", "url", "numbers_mt"])) == first


@pytest.mark.parametrize(
    "formatted",
    [
        "DROP TABLE governance.decisions",
        "INSERT INTO governance.decisions FORMAT Values",
        "ALTER TABLE governance.decisions DELETE WHERE 1",
        "CREATE TABLE x (a UInt8) ENGINE = Memory",
        "SYSTEM FLUSH LOGS",
        "SET readonly = 0",
        "KILL QUERY WHERE 1 ASYNC",
        "USE system",
        "OPTIMIZE TABLE governance.decisions FINAL",
        "TRUNCATE TABLE governance.decisions",
        "GRANT ALL ON *.* TO baton",
        "",
        "(",
        "'SELECT'",
        "`SELECT` 1",
    ],
)
def test_anything_but_a_read_is_refused_as_readonly(formatted: str) -> None:
    refused = _refused(check_statement, formatted)
    assert (refused.status, refused.code) == (403, 164)
    assert "runs only DESC, DESCRIBE, EXISTS, EXPLAIN, SELECT, SHOW, WITH statements" in str(
        refused
    )


@pytest.mark.parametrize(
    "formatted",
    [
        "SELECT file('/etc/passwd')",
        "SELECT FILE('/etc/passwd')",
        "SELECT `file`('/etc/passwd')",
        "SELECT \"file\"('/etc/passwd')",
        "SELECT `\\x66ile`('/etc/passwd')",  # ClickHouse runs this as file(): checked
        "SELECT `fi``le`('/x'), `fi\\x6ce`(1)",
        "SELECT file ('/etc/passwd')",
        "SELECT length(file('/etc/passwd'))",
        "SELECT *\nFROM url('http://evil.example/', CSV)",
        "SELECT *\nFROM remoteSecure('h:9440', system.one)",
        "SELECT *\nFROM Python(df)",
        "DESCRIBE TABLE file('/etc/passwd', LineAsString)",
        "EXPLAIN SYNTAX\nSELECT file('/etc/passwd')",
        "SELECT *\nFROM view(SELECT * FROM s3('http://x/y'))",
        "SELECT *\nFROM someNewConnector('x')",  # listed by the engine, not known safe
    ],
)
def test_files_urls_and_connectors_are_refused_however_spelled(formatted: str) -> None:
    denied = denied_functions(["file", "url", "s3", "remoteSecure", "python", "someNewConnector"])
    refused = _refused(check_statement, formatted, denied)
    assert (refused.status, refused.code) == (403, 497)
    assert "refused: the SQL endpoint reads only this audit's own tables" in str(refused)


@pytest.mark.parametrize(
    "formatted",
    [
        "SELECT 1\nINTO OUTFILE '/tmp/x'\nFORMAT CSV",
        "SELECT 'x'\nINTO OUTFILE 'y' APPEND",
        "EXPLAIN\nSELECT 1\nINTO OUTFILE '/tmp/x'",
        "SELECT 1\nINTO `OUTFILE` '/tmp/x'",
    ],
)
def test_into_outfile_is_refused(formatted: str) -> None:
    refused = _refused(check_statement, formatted)
    assert (refused.code, refused.status) == (497, 403)
    assert "INTO OUTFILE refused" in str(refused)


def test_a_second_statement_is_refused() -> None:
    refused = _refused(check_statement, "SELECT 1; DROP TABLE governance.decisions")
    assert (refused.code, refused.status) == (62, 400)
    assert "Multi-statements are not allowed" in str(refused)


def test_readonly_cannot_be_lifted_in_a_settings_clause() -> None:
    refused = _refused(check_statement, "SELECT 1\nSETTINGS max_threads = 1, readonly = 0")
    assert (refused.code, refused.status) == (164, 403)
    assert "Cannot modify 'readonly' setting" in str(refused)


def test_a_quote_that_closes_nothing_leaves_what_follows_as_code() -> None:
    # ClickHouse never prints such a text; if it did, the check would see more, not less
    refused = _refused(check_statement, "SELECT ` file('/etc/passwd')")
    assert refused.code == 497


def test_the_denied_names_cover_the_brief_and_every_listed_connector() -> None:
    brief = "file url s3 hdfs remote remotesecure mysql postgresql jdbc odbc executable input"
    for name in [*brief.split(), "cluster", "python"]:
        assert name in DENIED_FUNCTIONS
    listed = ["numbers", "view", "merge", "deltaLakeS3Cluster", "paimonHDFS", "arrowstream"]
    denied = denied_functions(listed)
    assert {"deltalakes3cluster", "paimonhdfs", "arrowstream"} <= denied
    assert not denied & SAFE_TABLE_FUNCTIONS
