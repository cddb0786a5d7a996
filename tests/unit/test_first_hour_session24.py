"""Session 24's first hour, walked as a newcomer: the exit status of a mistake says what the
README's list says it means (a query ClickHouse refuses is bad input, not an audit out of
reach), and what `baton up` refuses it refuses before it leaves anything on disk."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from baton.cli.main import _register, cli
from baton.schemas.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def baton() -> CliRunner:
    _register()
    return CliRunner()


# ------------------------------------------------- baton sql: a refused query is exit 2
class _Audit:
    """A ClickHouse client whose every query raises ``error`` (what clickhouse-connect
    raises for the server's answer, or for no answer)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def query(self, sql: str) -> Any:
        raise self.error

    command = raw_query = query


@pytest.fixture
def audit_raising(monkeypatch: pytest.MonkeyPatch) -> Any:
    import baton.cli.query_cmds as query_cmds

    def use(error: Exception) -> None:
        @contextmanager
        def client(settings: Settings) -> Iterator[_Audit]:
            yield _Audit(error)

        settings = Settings(clickhouse_dsn="http://baton:secret@127.0.0.1:8123")
        monkeypatch.setattr(query_cmds, "query_settings", lambda dsn, data_dir: settings)
        monkeypatch.setattr(query_cmds, "audit_client", client)

    return use


def _answer(code: int, text: str) -> DatabaseError:
    """clickhouse-connect's error for an HTTP answer carrying X-ClickHouse-Exception-Code."""
    return DatabaseError(
        f"Received ClickHouse exception, code: {code}, server response: Code: {code}. "
        f"DB::Exception: {text}",
        code=code,
    )


def test_a_query_with_a_syntax_error_is_bad_input_not_an_unreachable_audit(
    baton: CliRunner, audit_raising: Any
) -> None:
    # it was exit 5, "the audit unreachable": a script retried a typo forever
    audit_raising(_answer(62, "Syntax error: failed at position 1 ('SELEC'). (SYNTAX_ERROR)"))
    result = baton.invoke(cli, ["sql", "SELEC 1"])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "baton: error: ClickHouse at http://baton:***@127.0.0.1:8123 refused the query: "
        "Code: 62. DB::Exception: Syntax error: failed at position 1 ('SELEC'). (SYNTAX_ERROR)\n"
    )


def test_a_refused_statement_of_a_script_is_named_with_its_line(
    baton: CliRunner, audit_raising: Any
) -> None:
    audit_raising(_answer(60, "Unknown table expression identifier 'nowhere'. (UNKNOWN_TABLE)"))
    result = baton.invoke(cli, ["sql", "-"], input="-- name: broken\nSELECT x FROM nowhere;\n")
    assert result.exit_code == 2, result.output
    assert "refused the query" in result.stderr  # one statement: no "1 of 1"
    result = baton.invoke(cli, ["sql", "-"], input="SELECT 1;\n-- name: broken\nSELECT x;\n")
    assert result.exit_code == 2, result.output
    assert "refused statement 1 of 2 (SELECT 1, line 1): Code: 60." in result.stderr


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("HTTPConnectionPool(host='127.0.0.1', port=8123): connection refused"),
        _answer(241, "Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)"),
        _answer(202, "Too many simultaneous queries. (TOO_MANY_SIMULTANEOUS_QUERIES)"),
        DatabaseError("HTTP driver received HTTP status 502"),  # no code: not ClickHouse's
    ],
    ids=["unreachable", "out-of-memory", "busy", "no-code"],
)
def test_an_audit_that_is_away_or_busy_is_still_exit_5(
    baton: CliRunner, audit_raising: Any, error: Exception
) -> None:
    audit_raising(error)
    result = baton.invoke(cli, ["sql", "SELECT 1"])
    assert result.exit_code == 5, result.output
    assert result.stderr.startswith("baton: error: ClickHouse at http://baton:***@127.0.0.1:8123 ")
