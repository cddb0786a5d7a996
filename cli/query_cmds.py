"""``baton sql`` and ``baton trace``: read the audit, a query or one run's story at a time."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from clickhouse_connect.driver.client import Client

from baton.cli.audit_options import audit_client, dsn_option, query_settings
from baton.schemas.errors import AuditUnavailable, BadArgument
from baton.schemas.settings import Settings
from baton.sinks.sql_script import Statement

__all__ = ["MAX_SCRIPT_BYTES", "sql_cmd", "trace_cmd"]

_OUTPUT = click.Choice(["table", "csv", "json"])


class _SqlCommand(click.Command):
    """``baton sql``: a query argument that starts with a ``--`` comment line is SQL, not an
    option (click would read ``-- name: x\nSELECT 1`` as an unknown option)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        sql = [a for a in args if _starts_with_sql_comment(a)]
        if sql:
            rest = [a for a in args if not _starts_with_sql_comment(a)]
            args = rest + sql if "--" in rest else [*rest, "--", *sql]
        return super().parse_args(ctx, args)


def _starts_with_sql_comment(arg: str) -> bool:
    """True for ``-- comment ...`` / ``--comment\nSELECT ...``: no option looks like that."""
    return arg.startswith("--") and (arg[2:3].isspace() or "\n" in arg)


@click.command(
    "sql", cls=_SqlCommand, short_help="Run an SQL query (or a file of them) against the audit."
)
@click.argument("query")
@click.option(
    "--format",
    "-f",
    "fmt",
    type=_OUTPUT,
    default="table",
    show_default=True,
    help="output: aligned table, CSV with a header, or JSON lines",
)
@dsn_option
def sql_cmd(query: str, fmt: str, clickhouse_dsn: str | None, data_dir: Path | None) -> None:
    """Run QUERY ('-' reads it from stdin) against the audit, e.g.

    baton sql "SELECT reason, count() FROM governance.decisions FINAL GROUP BY reason"

    Several statements separated by ';' (baton sql - < docs/queries.sql) run one by one,
    each result under a '-- N: name' header; the first that fails ends the command:
    exit 2 when ClickHouse refused it (syntax, unknown column, a write), 5 when the audit
    did not answer.
    Comment lines (--, /* */) may lead a statement. A query ending in its own FORMAT
    clause (FORMAT JSON, PrettyCompact ...) is printed exactly as ClickHouse returns it.
    """
    from baton.sinks.sql_script import ScriptError, split_statements

    settings = query_settings(clickhouse_dsn, data_dir)
    text = _read_script() if query == "-" else query
    source = "stdin" if query == "-" else "the query"
    try:
        statements = split_statements(text)
    except ScriptError as exc:
        raise click.BadParameter(
            f"cannot split {source} into statements: {exc}", param_hint="QUERY"
        ) from None
    if not statements:
        raise click.BadParameter(
            f"{source} holds no SQL statement (only blanks or comments); expected e.g. "
            '"SELECT count() FROM governance.decisions FINAL"',
            param_hint="QUERY",
        )
    with audit_client(settings) as client:
        for statement in statements:
            if len(statements) > 1:
                blank = "\n" if statement.number > 1 else ""
                click.echo(f"{blank}-- {statement.number}: {statement.name}")
            _run_one(client, settings, statement, len(statements), fmt)


#: the most SQL `baton sql -` reads from stdin (a script of queries, not a data file)
MAX_SCRIPT_BYTES = 16 * 1024 * 1024


def _read_script() -> str:
    """The SQL on stdin, refused past MAX_SCRIPT_BYTES or when it is not UTF-8 text."""
    data = sys.stdin.buffer.read(MAX_SCRIPT_BYTES + 1)
    if len(data) > MAX_SCRIPT_BYTES:
        raise click.BadParameter(
            f"stdin holds more than {MAX_SCRIPT_BYTES // (1024 * 1024)} MiB; expected a script "
            "of SQL statements (insert data with a ClickHouse client)",
            param_hint="QUERY",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(
            f"stdin is not UTF-8 text (byte {exc.start}); expected a script of SQL statements",
            param_hint="QUERY",
        ) from None


def _run_one(
    client: Client, settings: Settings, statement: Statement, count: int, fmt: str
) -> None:
    """Run one statement of ``baton sql`` and print its result."""
    from baton.sinks.clickhouse import audit_errors, parse_dsn
    from baton.sinks.query import run_statement
    from baton.sinks.render import render

    doing = "running the query"
    if count > 1:
        doing = (
            f"running statement {statement.number} of {count} ({statement.name}, "
            f"line {statement.line})"
        )
    label = parse_dsn(settings.clickhouse_dsn).label
    try:
        with audit_errors(label, doing):
            result = run_statement(client, statement.sql)
    except AuditUnavailable as exc:
        if not _query_refused(exc.__cause__):
            raise
        # the server answered that the query is wrong: bad input (exit 2), not an audit out of
        # reach (exit 5, which a script reads as "try again later")
        what = "the query" if count == 1 else doing.removeprefix("running ")
        gist = str(exc).partition(f" while {doing}: ")[2] or str(exc)
        raise BadArgument(f"ClickHouse at {label} refused {what}: {gist}") from exc
    if result.raw is not None:
        sys.stdout.buffer.write(result.raw)
        sys.stdout.flush()
    elif result.summary is not None:
        click.echo(result.summary)
    else:
        # color=True: click strips ANSI sequences when stdout is no terminal, which changed a
        # client's id in a CSV export (escaped for a terminal by render itself)
        terminal = sys.stdout.isatty()
        click.echo(render(result.columns, result.rows, fmt, terminal=terminal), color=True)


#: server codes that say ClickHouse is busy or failing, not that the query is wrong: still
#: "audit unavailable" (exit 5) from `baton sql` (TIMEOUT_EXCEEDED, SOCKET_TIMEOUT,
#: NETWORK_ERROR, MEMORY_LIMIT_EXCEEDED, TOO_MANY_SIMULTANEOUS_QUERIES, QUERY_WAS_CANCELLED)
_SERVER_TROUBLE_CODES = frozenset({159, 209, 210, 241, 202, 394})


def _query_refused(cause: BaseException | None) -> bool:
    """ClickHouse answered that the statement itself is wrong (a syntax error, an unknown
    column or table, a read-only refusal); False for anything else (unreachable, a timeout,
    a server out of memory: the audit's trouble, not the query's)."""
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    if not isinstance(cause, DatabaseError) or isinstance(cause, OperationalError):
        return False
    code = getattr(cause, "code", None)
    return isinstance(code, int) and code not in _SERVER_TROUBLE_CODES


@click.command("trace")
@click.argument("run_id")
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, JSON lines (every audit field) for tools",
)
@dsn_option
def trace_cmd(run_id: str, fmt: str, clickhouse_dsn: str | None, data_dir: Path | None) -> None:
    """Show RUN_ID's decisions in order: every handoff, outcome and reason, owner, depth,
    spend after each step, approvals."""
    from baton.sinks.clickhouse import audit_errors, parse_dsn
    from baton.sinks.render import render
    from baton.sinks.trace import TRACE_COLUMNS, format_trace, load_trace

    settings = query_settings(clickhouse_dsn, data_dir)
    with (
        audit_client(settings) as client,
        audit_errors(parse_dsn(settings.clickhouse_dsn).label, f"loading run {run_id}"),
    ):
        steps = load_trace(client, run_id)
    if fmt == "json":
        click.echo(render(TRACE_COLUMNS, [[s[c] for c in TRACE_COLUMNS] for s in steps], "json"))
    else:
        click.echo(format_trace(run_id, steps))
