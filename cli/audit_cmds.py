"""``baton sink``, ``sql``, ``trace`` and ``alerts``: the commands of the audit trail."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from clickhouse_connect.driver.client import Client

from baton.cli.options import build_settings, setting_options
from baton.cli.stack_record import audit_settings, data_dir_option, stack_settings
from baton.schemas.settings import Settings
from baton.sinks.sql_script import Statement

__all__ = ["register"]

F = TypeVar("F", bound=Callable[..., Any])

_OUTPUT = click.Choice(["table", "csv", "json"])


def _dsn_option(fn: F) -> F:
    fn = data_dir_option(fn)
    return click.option(
        "--dsn",
        "--clickhouse-dsn",
        "clickhouse_dsn",
        default=None,
        help="ClickHouse: http(s)://user:pass@host:8123/db, chdb:///abs/dir (a directory "
        "another baton process holds is queried through its SQL endpoint), or the endpoint "
        "itself with its token, http://baton:TOKEN@127.0.0.1:8123 (the sql= DSN of `baton "
        "up`'s ready line); wins over --data-dir [env BATON_CLICKHOUSE_DSN; for https:// "
        "also BATON_CLICKHOUSE_CA, the CA that signed the server's certificate, and "
        "BATON_CLICKHOUSE_VERIFY=false for a throwaway test server only]",
    )(fn)


def _audit_settings(clickhouse_dsn: str | None, data_dir: Path | None) -> Settings:
    """Settings whose DSN the query commands use: --dsn, else the audit of --data-dir (whose
    SQL endpoint ``connect`` follows with the token registered there), else
    BATON_CLICKHOUSE_DSN, else the stack of BATON_DATA_DIR or ``./.baton``
    (``baton.cli.stack_record``)."""
    from baton.sinks.clickhouse import parse_dsn

    settings = audit_settings(clickhouse_dsn, data_dir)
    target = parse_dsn(settings.clickhouse_dsn)
    if target.chdb_path is not None:
        _check_endpoint_readable(target.chdb_path)
    return settings


def _check_endpoint_readable(chdb_dir: Path) -> None:
    """An endpoint file we may not read (another user's `baton up`: mode 0600) would read as
    "no endpoint registered"; say what it is instead."""
    from baton.schemas.errors import AuditUnavailable
    from baton.sinks.clickhouse import ENDPOINT_FILE

    endpoint = chdb_dir / ENDPOINT_FILE
    try:
        with endpoint.open("rb"):
            pass
    except FileNotFoundError:
        return
    except OSError as exc:
        raise AuditUnavailable(
            f"cannot read the SQL endpoint's token in {endpoint}: {exc.strerror or exc}; it is "
            "readable by the user who runs `baton up` only (mode 0600): run as that user, or "
            "pass --dsn http://baton:TOKEN@127.0.0.1:PORT (the sql= DSN of its ready line)"
        ) from None


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM, so loops stop cleanly (flush, commit, close)."""
    stop = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _client(settings: Settings) -> Iterator[Client]:
    from baton.sinks.clickhouse import connect

    client = connect(
        settings.clickhouse_dsn, ca_cert=settings.clickhouse_ca, verify=settings.clickhouse_verify
    )
    try:
        yield client
    finally:
        client.close()


# --------------------------------------------------------------------------- sink


@click.command("sink")
@setting_options(
    "bootstrap",
    "topic_prefix",
    "clickhouse_dsn",
    "audit_ttl_days",
    "sink_batch_size",
    "sink_batch_timeout_s",
    "app_id",
    "partitions",
    "replication_factor",
    "metrics_port",
    "metrics_host",
    "log_format",
)
@click.option(
    "--sql-host",
    default="127.0.0.1",
    show_default=True,
    help="with chDB: the address to serve SQL on (read-only ClickHouse HTTP interface subset, "
    "token required). Beyond the loopback interface the token and results cross the network "
    "without TLS: a warning says so",
)
@click.option(
    "--sql-port",
    default="8123",
    show_default=True,
    help="with chDB: the SQL port; 0 = any free port, off = do not serve",
)
@click.option(
    "--report-every",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="seconds between status lines (rows, rate, lag per partition) on stderr",
)
def sink_cmd(sql_host: str, sql_port: str, report_every: float, **overrides: Any) -> None:
    """Consume gov.decisions into ClickHouse governance.decisions (batched, at least once,
    deduplicated by decision_id); with chDB, also serve SQL for other processes."""
    from baton.sinks.sink import run_sink

    settings = build_settings(**overrides)
    port = None if sql_port.lower() in ("off", "none", "") else _port(sql_port)
    from baton.cli.log_format import LogOutput
    from baton.processors.metrics import SinkMetrics, serve_from_settings

    output = LogOutput(settings.log_format, "sink")
    output.install()
    running: list[Any] = []  # the sink, once connected: its stats are the metrics
    metrics = serve_from_settings(
        settings, SinkMetrics(lambda: running[0].stats if running else None)
    )
    if metrics is not None:
        output.say(f"audit sink: metrics on {metrics.url}")

    from baton.sinks.sql_guard import is_loopback

    if port is not None and not is_loopback(sql_host):
        output.say(
            f"audit sink: WARNING: serving SQL on {sql_host}, beyond the loopback interface: "
            "anyone who can reach it and holds the token reads the audit, and the token and "
            "the results cross the network without TLS",
            logging.WARNING,
        )

    def ready(sink: Any, server: Any) -> None:
        # never the token itself: this line ends up in log files (baton up's logs/sink.log)
        where = (
            f"; SQL on {server.url} (user {server.user}, token in "
            f"{server.engine_path}/baton-sql-endpoint.json)"
            if server
            else ""
        )
        running.append(sink)
        output.say(f"audit sink: {sink.topic} -> {sink.label}{where}")

    def report(stats: Any) -> None:
        if stats.rows or stats.last_error:
            output.say(f"audit sink: {stats.describe()}")

    with _stop_on_signals() as stop:
        stats = run_sink(
            settings,
            stop,
            sql_host=sql_host,
            sql_port=port,
            on_ready=ready,
            on_report=report,
            report_every_s=report_every,
        )
    output.say(
        f"audit sink stopped: {stats.rows} decisions in {stats.batches} batches, "
        f"{stats.rejected} rejected"
    )


def _group_id(value: str | None) -> str | None:
    """A Kafka consumer group id: 1-249 printable ASCII characters (Kafka's topic-name
    bound, a sane one for groups), or None for the default."""
    if value is None:
        return None
    if not (0 < len(value) <= 249 and value.isascii() and value.isprintable()):
        raise click.BadParameter(
            f"expected 1-249 printable ASCII characters, got {value[:40]!r}"
            + (f"… ({len(value)} characters)" if len(value) > 40 else ""),
            param_hint="--group",
        )
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise click.BadParameter(f"expected 0-65535 or off, got {text!r}", param_hint="--sql-port")
    return port


# --------------------------------------------------------------------------- sql


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


@click.command("sql", cls=_SqlCommand)
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
@_dsn_option
def sql_cmd(query: str, fmt: str, clickhouse_dsn: str | None, data_dir: Path | None) -> None:
    """Run QUERY ('-' reads it from stdin) against the audit, e.g.

    baton sql "SELECT reason, count() FROM governance.decisions FINAL GROUP BY reason"

    Several statements separated by ';' (baton sql - < docs/queries.sql) run one by one,
    each result under a '-- N: name' header; the first that fails ends the command.
    Comment lines (--, /* */) may lead a statement. A query ending in its own FORMAT
    clause (FORMAT JSON, PrettyCompact ...) is printed exactly as ClickHouse returns it.
    """
    from baton.sinks.sql_script import ScriptError, split_statements

    settings = _audit_settings(clickhouse_dsn, data_dir)
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
    with _client(settings) as client:
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
    with audit_errors(parse_dsn(settings.clickhouse_dsn).label, doing):
        result = run_statement(client, statement.sql)
    if result.raw is not None:
        sys.stdout.buffer.write(result.raw)
        sys.stdout.flush()
    elif result.summary is not None:
        click.echo(result.summary)
    else:
        click.echo(render(result.columns, result.rows, fmt))


# --------------------------------------------------------------------------- trace


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
@_dsn_option
def trace_cmd(run_id: str, fmt: str, clickhouse_dsn: str | None, data_dir: Path | None) -> None:
    """Show RUN_ID's decisions in order: every handoff, outcome and reason, owner, depth,
    spend after each step, approvals."""
    from baton.sinks.clickhouse import audit_errors, parse_dsn
    from baton.sinks.render import render
    from baton.sinks.trace import TRACE_COLUMNS, format_trace, load_trace

    settings = _audit_settings(clickhouse_dsn, data_dir)
    with (
        _client(settings) as client,
        audit_errors(parse_dsn(settings.clickhouse_dsn).label, f"loading run {run_id}"),
    ):
        steps = load_trace(client, run_id)
    if fmt == "json":
        click.echo(render(TRACE_COLUMNS, [[s[c] for c in TRACE_COLUMNS] for s in steps], "json"))
    else:
        click.echo(format_trace(run_id, steps))


# --------------------------------------------------------------------------- alerts


@click.group("alerts", invoke_without_command=True)
@setting_options(
    "bootstrap",
    "topic_prefix",
    "app_id",
    "session_timeout_s",
    "partitions",
    "replication_factor",
    "webhook_url",
    "metrics_port",
    "metrics_host",
    "log_format",
)
@click.option(
    "--storm-threshold",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="this many stops within --storm-window fold into one summary (0 = never)",
)
@click.option(
    "--storm-window", type=click.FloatRange(min=0.1), default=5.0, show_default=True, help="seconds"
)
@click.option(
    "--group",
    "group_id",
    default=None,
    callback=lambda _ctx, _param, value: _group_id(value),
    help="Kafka consumer group: alerters in one group share the stops (each announced by "
    "one of them), alerters in different groups each announce every stop [default: "
    "APP_ID-alerts; the alerter of `baton up` uses APP_ID-up-alerts, so a `baton alerts` "
    "next to it also sees every stop]",
)
@data_dir_option
@click.option(
    "--max-age",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="skip stops decided longer ago than this many seconds (0 = any age)",
)
@click.pass_context
def alerts_group(
    ctx: click.Context,
    storm_threshold: int,
    storm_window: float,
    max_age: float,
    group_id: str | None,
    data_dir: Path | None,
    **overrides: Any,
) -> None:
    """Announce every stop from gov.stops (console, and --webhook-url as Slack JSON), once per
    decision, storms folded. `baton alerts check` evaluates SQL alert rules instead."""
    if ctx.invoked_subcommand is not None:
        return
    from baton.cli.log_format import LogOutput
    from baton.processors.metrics import AlertMetrics, serve_from_settings
    from baton.sinks.alerts import run_alerts

    settings = stack_settings(overrides, data_dir)
    output = LogOutput(settings.log_format, "alerts")
    output.install()
    watched = AlertMetrics()
    metrics = serve_from_settings(settings, watched)
    if metrics is not None:
        output.say(f"alerts: metrics on {metrics.url}")
    with _stop_on_signals() as stop:
        alerter = run_alerts(
            settings,
            stop,
            storm_threshold=storm_threshold,
            storm_window_s=storm_window,
            max_age_s=max_age,
            group_id=group_id,
            emit=lambda text: click.echo(text),
            on_ready=watched.watch,
        )
    if alerter.duplicates:
        output.say(f"alerts: {alerter.duplicates} duplicate stops not announced again")


@alerts_group.command("check")
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML rules (tune built-ins, add your own); built-ins if unset",
)
@click.option("--webhook-url", default=None, help="also post fired rules here (Slack JSON)")
@_dsn_option
def alerts_check(
    rules_path: Path | None,
    webhook_url: str | None,
    clickhouse_dsn: str | None,
    data_dir: Path | None,
) -> None:
    """Evaluate SQL alert rules over the audit; exit 1 when any fired, 0 when none did
    (2 when a rule is broken)."""
    from baton.schemas.errors import ConfigError
    from baton.sinks.alerts import post_webhook
    from baton.sinks.render import render_table
    from baton.sinks.rules import evaluate_rules, load_rules

    parent = click.get_current_context().parent  # `baton alerts --data-dir DIR check`
    if data_dir is None and parent is not None:
        data_dir = parent.params.get("data_dir")
    settings = _audit_settings(clickhouse_dsn, data_dir)
    rules = load_rules(rules_path)
    with _client(settings) as client:
        results = evaluate_rules(client, rules)
    fired = [r for r in results if r.fired]
    broken = [r for r in results if r.error]
    for result in results:
        if result.error:
            click.echo(f"ERROR  {result.rule.name}: {result.error}")
        elif result.fired:
            click.echo(f"FIRED  {result.rule.name}: {result.rule.summary()}")
            table = render_table(result.columns, result.rows)
            click.echo("\n".join("         " + line for line in table.splitlines()))
        else:
            click.echo(f"ok     {result.rule.name}")
    if not webhook_url and settings.webhook_url is not None:
        webhook_url = settings.webhook_url.get_secret_value()
    if webhook_url and fired:
        text = "🚨 Baton alert rules fired: " + "; ".join(
            f"{r.rule.name} ({len(r.rows)}): {r.rule.summary()}" for r in fired
        )
        post_webhook(webhook_url, text)
    if broken:
        raise ConfigError(
            f"{len(broken)} alert rule(s) failed: " + ", ".join(r.rule.name for r in broken)
        )
    sys.exit(1 if fired else 0)


def register(cli: click.Group) -> None:
    """Add the audit commands to the ``baton`` group."""
    for command in (sink_cmd, sql_cmd, trace_cmd, alerts_group):
        cli.add_command(command)
