"""``baton sink``: consume gov.decisions into the ClickHouse audit, serving SQL over chDB."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

import click

from baton.cli.audit_options import stop_on_signals
from baton.cli.options import FiniteFloatRange, build_settings, setting_help, setting_options

__all__ = ["sink_cmd"]


@click.command("sink")
@setting_options(
    "bootstrap",
    "topic_prefix",
    "clickhouse_dsn",
    "audit_ttl_days",
    "sink_batch_size",
    "sink_batch_timeout_s",
    "sink_parse_processes",
    "sink_max_receive_bytes",
    "app_id",
    "partitions",
    "replication_factor",
    "metrics_port",
    "metrics_host",
    "log_format",
)
# --dsn as well, the name `baton sql`, `trace`, `doctor` ... take (applied before
# setting_options, which then adds no second --clickhouse-dsn)
@click.option(
    "--clickhouse-dsn",
    "--dsn",
    "clickhouse_dsn",
    default=None,
    help=setting_help("clickhouse_dsn"),
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
    type=FiniteFloatRange(min=1, max=86400),
    default=30.0,
    show_default=True,
    help="seconds between status lines (rows, rate, lag per partition) on stderr",
)
@click.option(
    "--drain-s",
    type=FiniteFloatRange(min=0, max=3600),
    default=0.0,
    show_default=True,
    help="on Ctrl-C or SIGTERM, first read gov.decisions to its end and store it, for up to "
    "this many seconds, then stop (a second signal stops at once). 0: store the batch in hand "
    "and stop. `baton up` runs its sink with 20 after its workers have stopped: its embedded "
    "broker forgets every decision when it stops",
)
def sink_cmd(
    sql_host: str, sql_port: str, report_every: float, drain_s: float, **overrides: Any
) -> None:
    """Consume gov.decisions into ClickHouse governance.decisions (batched, at least once,
    deduplicated by decision_id); with chDB, also serve SQL for other processes.

    While Kafka or a ClickHouse server is unreachable it waits and retries (a line each
    time, at most 30 s apart), where `baton worker` exits 4 at once: a sink started before
    its audit catches up once the audit is there. Ends 0 on Ctrl-C or SIGTERM, also while
    retrying (nothing was read); 5 when a chDB directory cannot be opened; 2 on a bad
    setting.

    Given the workers' chain key (BATON_AUDIT_CHAIN_KEY, or the file
    BATON_AUDIT_CHAIN_KEY_FILE names) it stores only decision records the workers marked
    with it: any other is refused as forged, kept in governance.rejected."""
    from baton.sinks.sink import run_sink

    settings = build_settings(**overrides)
    port = None if sql_port.lower() in ("off", "none", "") else _port(sql_port)
    from baton.cli.log_format import LogOutput
    from baton.processors.metrics_audit import SinkMetrics
    from baton.processors.metrics_serve import serve_from_settings

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
        # (whether it refuses records no worker MACed: h45b F3, INFO lines are not shown)
        checked = "; workers' audit MAC required" if sink.mac_keys else "; no workers' key"
        output.say(f"audit sink: {sink.topic} -> {sink.label}{where}{checked}")

    def report(stats: Any) -> None:
        # a stall behind the receive bound too: error_cb counts it, and a sink stalled before
        # its first row (restarted behind the batch) printed no status line
        if stats.rows or stats.last_error or stats.oversized_answers:
            output.say(f"audit sink: {stats.describe()}")

    with stop_on_signals() as stop:
        drain = _drain_first(stop, drain_s, output.say)
        # baton up starts its sink with these held (one sent while it imported killed it)
        from baton.streams.broker_guard import release_signals

        release_signals()
        stats = run_sink(
            settings,
            stop,
            sql_host=sql_host,
            sql_port=port,
            on_ready=ready,
            on_report=report,
            report_every_s=report_every,
            drain_event=drain,
        )
    output.say(
        f"audit sink stopped: {stats.rows} decisions in {stats.batches} batches, "
        f"{stats.rejected} rejected"
    )


#: a draining sink whose `baton up` is gone drains on its own this long after (the broker's
#: guard tells it before: streams/broker_guard.py)
ORPHANED_DRAIN_S = 20.0


def _drain_first(
    stop: threading.Event, drain_s: float, say: Callable[[str], None]
) -> threading.Event | None:
    """With ``drain_s``: the first Ctrl-C or SIGTERM sets the returned event (read to the
    end, then stop; a sink still starting reads once its partitions are assigned: one
    `baton up` started again at its stop, H2 session 35) and ``stop`` ``drain_s`` later; a
    second one sets ``stop`` at once."""
    if drain_s <= 0:
        return None
    drain = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        if drain.is_set():
            stop.set()
            return
        drain.set()
        timer = threading.Timer(drain_s, stop.set)
        timer.daemon = True
        timer.start()
        line = f"audit sink: stopping: reading the decisions to their end first (≤ {drain_s:g} s)"
        threading.Thread(target=say, args=(line,), daemon=True).start()  # not in the handler

    def orphaned(signum: int, _frame: Any) -> None:
        # `baton up` is gone (this sink's parent-death signal): its broker's guard sends the
        # SIGTERM once the workers have ended; if none comes, drain anyway
        def late() -> None:
            if not drain.is_set():  # (the guard's SIGTERM came: that drain goes on)
                handle(signal.SIGTERM, None)

        timer = threading.Timer(ORPHANED_DRAIN_S, late)
        timer.daemon = True
        timer.start()

    def drain_unless_draining(signum: int, _frame: Any) -> None:
        # the broker guard's turn for the sink (`baton up` gone); `baton up` may have died
        # during its own stop, this sink already draining: a second SIGTERM would end that
        if not drain.is_set():
            handle(signum, _frame)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)
    signal.signal(signal.SIGUSR1, orphaned)
    signal.signal(signal.SIGUSR2, drain_unless_draining)
    return drain


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise click.BadParameter(f"expected 0-65535 or off, got {text!r}", param_hint="--sql-port")
    return port
