"""``baton sql`` scripts: splitting several statements, and leading comment lines as SQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.sinks.sql_script import ScriptError, split_statements

pytestmark = pytest.mark.unit

QUERIES = Path(__file__).resolve().parents[2] / "docs" / "queries.sql"


def test_queries_sql_splits_into_its_named_queries() -> None:
    text = QUERIES.read_text()
    statements = split_statements(text)
    names = [s.name for s in statements]
    assert names == [
        line.split("name:", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("-- name:")
    ]
    assert [s.number for s in statements] == list(range(1, len(statements) + 1))
    assert all(not s.sql.endswith(";") for s in statements)
    assert statements[-1].sql.endswith("ORDER BY minute, stops DESC")


def test_semicolons_inside_strings_names_and_comments_do_not_split() -> None:
    script = """
    SELECT 'a;b', "c;d", `e;f`, 'it''s; here', 'back\\'slash;' -- trailing; comment
    /* block; /* nested; */ still; */ ;
    # hash; comment
    SELECT 2;
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[0].sql.startswith("SELECT 'a;b'")
    assert statements[0].sql.endswith("still; */")
    assert statements[1].sql.endswith("SELECT 2")
    assert statements[1].name == "SELECT 2"
    assert statements[1].line == 4  # the hash comment leads it


def test_comment_only_parts_are_no_statements() -> None:
    assert split_statements("-- nothing here;\n/* nor; here */ ;;  \n") == []
    assert [s.sql for s in split_statements("SELECT 1;;\n-- the end\n")] == ["SELECT 1"]


def test_a_hash_needs_a_space_or_bang_to_start_a_comment() -> None:
    # ClickHouse reads '#' as a comment only before ' ' or '!'
    assert len(split_statements("SELECT 1 #x; SELECT 2")) == 2


@pytest.mark.parametrize("script", ["SELECT 'open; SELECT 2", "SELECT 1 /* open; SELECT 2"])
def test_an_unclosed_quote_or_comment_is_refused_with_its_line(script: str) -> None:
    with pytest.raises(ScriptError, match="line 1 is never closed"):
        split_statements(script)


def test_a_long_name_is_cut() -> None:
    (statement,) = split_statements("SELECT " + "x" * 200)
    assert len(statement.name) == 60 and statement.name.endswith("...")


def _sql(*args: str, stdin: str | None = None) -> tuple[int, str]:
    _register()
    result = CliRunner().invoke(cli, ["sql", *args], input=stdin)
    return result.exit_code, result.output


def test_a_query_argument_with_leading_comment_lines_is_sql_not_an_option(
    tmp_path: Path,
) -> None:
    missing = f"chdb://{tmp_path / 'no-audit'}"
    code, output = _sql("--dsn", missing, "-- name: x\nSELECT 1", "-f", "csv")
    # it got as far as the audit: the comment was taken as the query, -f still as an option
    assert "No such option" not in output
    assert "no audit at" in output and code == 5


@pytest.mark.parametrize(
    ("args", "stdin", "expected"),
    [
        (["-- only a comment"], None, "holds no SQL statement"),
        (["-"], "/* only */ ; ; -- comments\n", "stdin holds no SQL statement"),
        (["SELECT 'open"], None, "the quote ' opened on line 1 is never closed"),
    ],
)
def test_an_empty_or_unsplittable_script_is_refused_before_connecting(
    args: list[str], stdin: str | None, expected: str, tmp_path: Path
) -> None:
    code, output = _sql("--dsn", f"chdb://{tmp_path / 'no-audit'}", *args, stdin=stdin)
    assert code == 2 and expected in output


def test_stdin_past_the_limit_or_not_utf8_is_refused(tmp_path: Path) -> None:
    from baton.cli import query_cmds

    _register()
    dsn = f"chdb://{tmp_path / 'no-audit'}"
    big = b"SELECT 1;" * (query_cmds.MAX_SCRIPT_BYTES // 9 + 1)
    result = CliRunner().invoke(cli, ["sql", "--dsn", dsn, "-"], input=big)
    assert result.exit_code == 2 and "stdin holds more than 16 MiB" in result.output
    result = CliRunner().invoke(cli, ["sql", "--dsn", dsn, "-"], input=b"SELECT '\xff'")
    assert result.exit_code == 2 and "stdin is not UTF-8 text (byte 8)" in result.output


def test_pathological_scripts_split_in_linear_time() -> None:
    import time

    started = time.perf_counter()
    assert len(split_statements("SELECT '" + "x" * 5_000_000 + "'")) == 1
    assert len(split_statements("SELECT 1 " + "-- c;\n" * 500_000)) == 1
    with pytest.raises(ScriptError):
        split_statements("SELECT '" + "\\'" * 1_000_000)
    assert len(split_statements("/*" * 50_000 + "*/" * 50_000 + " SELECT 1")) == 1
    assert time.perf_counter() - started < 5
