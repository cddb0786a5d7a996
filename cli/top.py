"""``baton top``: a live terminal view of a running deployment, from its audit and /metrics.

One frame shows, over the last ``--window`` seconds of the audit: decisions per second by
outcome, stops by reason, approvals still pending, the runs with the most spend and the most
handoffs; and from each ``--metrics`` endpoint (a worker's, a sink's): consumer lag per
partition, runs in memory, dead letters, decision latency and the decision rate between two
frames. ``--once`` prints one frame without terminal control codes (for scripts and tests).

Every name that comes from the audit (run ids, tenants, reasons) is printed through
``clean_field``: a hostile run id cannot move the cursor or repaint the screen.

Not guaranteed: the audit is as fresh as the sink (a second or so behind the worker); a
metrics endpoint that does not answer within 2 s is shown as unreachable for that frame.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import click

from baton.cli.options import FiniteFloatRange
from baton.cli.top_audit import audit_reader, frame_audit
from baton.cli.top_frame import render_frame
from baton.cli.top_metrics import MetricsView, check_metrics_url, scrape
from baton.schemas import env_names

__all__ = ["register", "top_cmd"]

_CLEAR = "\x1b[H\x1b[2J"


@click.command("top")
@click.option("--once", is_flag=True, help="print one frame and exit (no screen control codes)")
@click.option(
    "--interval",
    type=FiniteFloatRange(min=0.5, max=3600),
    default=2.0,
    show_default=True,
    help="seconds between frames",
)
@click.option(
    "--window",
    type=click.IntRange(min=1, max=30 * 86400),
    default=60,
    show_default=True,
    help="seconds of the audit a frame covers (rates, stops, runs)",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1, max=100),
    default=5,
    show_default=True,
    help="runs shown per table",
)
@click.option(
    "--metrics",
    "metrics_urls",
    multiple=True,
    envvar=env_names.METRICS_URL,
    help="a /metrics endpoint to read (a worker's, a sink's; repeat for more) [env "
    "BATON_METRICS_URL; default: the worker's of the `baton up` found like the audit]",
)
@click.option(
    "--dsn",
    "--clickhouse-dsn",
    "clickhouse_dsn",
    default=None,
    help="the audit: http(s)://user:pass@host:8123/db, chdb:///abs/dir, or `baton up`'s "
    "sql= DSN [env BATON_CLICKHOUSE_DSN; default: the `baton up` found by --data-dir; for "
    "https:// also BATON_CLICKHOUSE_CA and BATON_CLICKHOUSE_VERIFY; BATON_CLICKHOUSE_TIMEOUT_S]",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="the data dir of the `baton up` to show: its audit and its worker's /metrics "
    "[env BATON_DATA_DIR; default ./.baton]",
)
def top_cmd(
    once: bool,
    interval: float,
    window: int,
    runs: int,
    metrics_urls: tuple[str, ...],
    clickhouse_dsn: str | None,
    data_dir: Path | None,
) -> None:
    """A live view of a running deployment: decisions/s, stops by reason, pending approvals,
    the runs with the most spend and handoffs (from the audit), lag, runs in memory and
    latency (from /metrics). Refreshes in place every --interval; Ctrl-C quits."""
    from baton.cli.stack_record import audit_settings, find_stack

    settings = audit_settings(clickhouse_dsn, data_dir)
    urls = [check_metrics_url(u) for u in metrics_urls]
    if not urls:
        found = find_stack(data_dir)
        record = found.record
        # live where it was found: a stack.json copied elsewhere does not pass for its stack
        if record is not None and record.live(found.data_dir) and record.metrics_url:
            urls = [check_metrics_url(record.metrics_url)]
    from baton.sinks.clickhouse import parse_dsn

    source = parse_dsn(settings.clickhouse_dsn).label
    previous: dict[str, MetricsView] = {}
    with audit_reader(settings) as query:
        try:
            while True:
                audit = frame_audit(query, window, runs)
                views = [scrape(u) for u in urls]
                frame = render_frame(audit, views, previous, datetime.now(UTC), source)
                if once:
                    click.echo(frame)
                    return
                click.echo(_CLEAR + frame)
                previous = {v.url: v for v in views}
                time.sleep(interval)
        except KeyboardInterrupt:
            pass


def register(cli: click.Group) -> None:
    cli.add_command(top_cmd)
