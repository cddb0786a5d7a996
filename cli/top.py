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

import http.client
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from baton.schemas.errors import ConfigError
from baton.sinks.alert_text import clean_field

__all__ = ["AuditView", "MetricsView", "register", "render_frame"]

#: a /metrics page of ours is a few KB; past this it is not ours
_MAX_METRICS_BYTES = 4 * 1024 * 1024
_SCRAPE_TIMEOUT_S = 2.0
_CLEAR = "\x1b[H\x1b[2J"

#: the audit queries of one frame; {window} is an integer number of seconds
OUTCOMES_SQL = """
SELECT toString(outcome) AS outcome, uniqExact(decision_id) AS n
FROM governance.decisions
WHERE decided_at >= now64(6) - INTERVAL {window} SECOND
GROUP BY outcome ORDER BY n DESC
"""
STOPS_SQL = """
SELECT toString(reason) AS reason, uniqExact(decision_id) AS n
FROM governance.decisions
WHERE outcome = 'stop' AND decided_at >= now64(6) - INTERVAL {window} SECOND
GROUP BY reason ORDER BY n DESC, reason LIMIT 10
"""
PENDING_SQL = """
SELECT count() AS pending, ifNull(dateDiff('second', min(requested_at), now64(6)), 0) AS oldest_s
FROM governance.approval_latency
WHERE requested_at IS NOT NULL AND resolved_at IS NULL
"""
TOP_RUNS_SQL = """
SELECT run_id, toString(tenant) AS tenant, toFloat64(spent_usd) AS spent_usd, handoffs,
       toString(final_outcome) AS final_outcome, toString(final_reason) AS final_reason
FROM governance.run_summary
WHERE last_at >= now64(6) - INTERVAL {window} SECOND
  AND tenant != '__baton__' AND run_id != '*'  -- readiness probes, control records
ORDER BY {order} DESC, run_id LIMIT {limit}
"""


@dataclass
class AuditView:
    """What the audit says about the last ``window_s`` seconds."""

    window_s: int
    outcomes: dict[str, int] = field(default_factory=dict)
    stops: list[tuple[str, int]] = field(default_factory=list)
    pending: int = 0
    oldest_pending_s: int = 0
    by_spend: list[tuple[Any, ...]] = field(default_factory=list)
    by_handoffs: list[tuple[Any, ...]] = field(default_factory=list)
    error: str | None = None

    @property
    def decisions(self) -> int:
        return sum(self.outcomes.values())


@dataclass
class MetricsView:
    """One scrape of a /metrics endpoint: samples by name, with their labels."""

    url: str
    at: float
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    error: str | None = None

    def total(self, name: str) -> float | None:
        values = self.samples.get(name)
        return None if values is None else sum(v for _labels, v in values)

    def by_label(self, name: str, label: str) -> list[tuple[str, float]]:
        return sorted((labels.get(label, ""), v) for labels, v in self.samples.get(name, ()))


def read_audit(
    query: Callable[[str], list[tuple[Any, ...]]], window_s: int, runs: int
) -> AuditView:
    """The audit's part of a frame; ``query(sql)`` returns result rows."""
    view = AuditView(window_s)
    view.outcomes = {str(o): int(n) for o, n in query(OUTCOMES_SQL.format(window=window_s))}
    view.stops = [(str(r), int(n)) for r, n in query(STOPS_SQL.format(window=window_s))]
    ((pending, oldest),) = query(PENDING_SQL) or [(0, 0)]
    view.pending, view.oldest_pending_s = int(pending), max(int(oldest or 0), 0)
    for order, target in (("spent_usd", view.by_spend), ("handoffs", view.by_handoffs)):
        target.extend(query(TOP_RUNS_SQL.format(window=window_s, order=order, limit=runs)))
    return view


def scrape(url: str, timeout_s: float = _SCRAPE_TIMEOUT_S) -> MetricsView:
    """One scrape of ``url``; a failure is the view's ``error``, never an exception."""
    from prometheus_client.parser import text_string_to_metric_families

    view = MetricsView(url, time.monotonic())
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # http(s) only: checked
            body = resp.read(_MAX_METRICS_BYTES + 1)
        if len(body) > _MAX_METRICS_BYTES:
            raise ValueError(f"over {_MAX_METRICS_BYTES} bytes: not a Baton /metrics page")
        for family in text_string_to_metric_families(body.decode("utf-8", "replace")):
            for sample in family.samples:
                view.samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    # HTTPException: a server that does not speak HTTP (BadStatusLine, a line too long)
    except (OSError, ValueError, urllib.error.URLError, http.client.HTTPException) as exc:
        view.error = clean_field(f"{type(exc).__name__}: {exc}", 200)
    return view


def check_metrics_url(url: str) -> str:
    """``url`` when it is an http(s) URL (urllib would also open file:// and ftp://)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # "http://[::1": an unclosed IPv6 bracket
        hostname = None
    if hostname is None or parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"--metrics: expected http://HOST:PORT/metrics (a worker's or sink's endpoint), "
            f"got {clean_field(url, 200)!r}"
        )
    return url


def quantile(buckets: list[tuple[str, float]], q: float) -> float | None:
    """The ``q`` quantile of a cumulative Prometheus histogram (linear within a bucket)."""
    bounds = sorted(
        (bound, count)
        for bound, count in ((_bound(le), count) for le, count in buckets)
        if bound is not None and math.isfinite(count)
    )
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    low_bound, low_count = 0.0, 0.0
    for bound, count in bounds:
        if count >= rank:
            if math.isinf(bound):
                return low_bound
            share = (rank - low_count) / (count - low_count) if count > low_count else 1.0
            return low_bound + (bound - low_bound) * share
        low_bound, low_count = bound, count
    return low_bound


def _bound(le: str) -> float | None:
    """A histogram bucket's upper bound; None for one that is not a number (a page that is
    not ours)."""
    try:
        bound = math.inf if le == "+Inf" else float(le)
    except ValueError:
        return None
    return None if math.isnan(bound) else bound


def _count(value: float) -> str:
    """A sample as a whole number; "?" for NaN or infinity (a page that is not ours), which
    int() would raise on and end the view."""
    return str(int(value)) if math.isfinite(value) else "?"


# ---------------------------------------------------------------------------- rendering
def _rate(now: MetricsView, before: MetricsView | None, name: str) -> float | None:
    if before is None or before.error or now.error or now.at <= before.at:
        return None
    a, b = before.total(name), now.total(name)
    if a is None or b is None or b < a:  # a restarted process starts from zero
        return None
    return (b - a) / (now.at - before.at)


def _seconds_text(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _lag_text(values: list[tuple[dict[str, str], float]]) -> str:
    """Total lag and each partition's (summed over the topics: requests and approvals)."""
    per: dict[int, float] = {}
    for labels, v in values:
        try:
            partition = int(labels.get("partition", "0"))
        except ValueError:
            continue
        per[partition] = per.get(partition, 0.0) + v
    each = " ".join(f"p{p}={_count(v)}" for p, v in sorted(per.items())[:64])
    return _count(sum(per.values())) + (f" ({each})" if each else "")


def _runs_table(title: str, rows: list[tuple[Any, ...]]) -> list[str]:
    if not rows:
        return [f"{title}: none in the window"]
    lines = [title, f"  {'run_id':<36} {'tenant':<16} {'spent_usd':>10} {'handoffs':>8}  last"]
    for run_id, tenant, spent, handoffs, outcome, reason in rows:
        lines.append(
            f"  {clean_field(str(run_id), 36):<36} {clean_field(str(tenant), 16):<16} "
            f"{float(spent):>10.2f} {int(handoffs):>8}  "
            f"{clean_field(str(outcome), 20)} {clean_field(str(reason), 40)}"
        )
    return lines


def _metrics_lines(view: MetricsView, before: MetricsView | None) -> list[str]:
    name = clean_field(view.url, 120)
    if view.error:
        return [f"{name}: unreachable ({view.error})"]
    parts: list[str] = []
    rate = _rate(view, before, "baton_decisions_total")
    if view.total("baton_decisions_total") is not None:
        parts.append(f"decisions {rate:.1f}/s" if rate is not None else "decisions -/s")
    latency = view.by_label("baton_decision_latency_seconds_bucket", "le")
    p50, p99 = quantile(latency, 0.5), quantile(latency, 0.99)
    if p50 is not None and p99 is not None:
        parts.append(f"latency p50 {_seconds_text(p50)} p99 {_seconds_text(p99)}")
    for metric, label in (("baton_consumer_lag", "worker lag"), ("baton_audit_lag", "audit lag")):
        values = view.samples.get(metric)
        if values is not None:
            parts.append(f"{label} {_lag_text(values)}")
    for metric, label in (
        ("baton_runs_in_memory", "runs in memory"),
        ("baton_dead_letters_total", "dead letters"),
        ("baton_audit_rows_total", "audit rows"),
    ):
        total = view.total(metric)
        if total is not None:
            parts.append(f"{label} {_count(total)}")
    rows_rate = _rate(view, before, "baton_audit_rows_total")
    if rows_rate is not None:
        parts.append(f"audit {rows_rate:.0f} rows/s")
    return [f"{name}:"] + [f"  {p}" for p in parts or ["no Baton metrics on this page"]]


def render_frame(
    audit: AuditView | None,
    metrics: list[MetricsView],
    previous: dict[str, MetricsView],
    at: datetime,
    source: str,
) -> str:
    """One frame as text (no control codes); pure, so tests check it line by line."""
    lines = [f"baton top  {at:%Y-%m-%d %H:%M:%S} UTC  audit {clean_field(source, 120)}"]
    if audit is None:
        lines.append("audit: not read")
    elif audit.error:
        lines.append(f"audit: unreachable ({audit.error})")
    else:
        w = audit.window_s
        rate = audit.decisions / w if w else 0.0
        by_outcome = "  ".join(f"{clean_field(o, 30)} {n}" for o, n in audit.outcomes.items())
        lines.append(
            f"decisions  {rate:.1f}/s over the last {w} s ({audit.decisions})"
            + (f"  {by_outcome}" if by_outcome else "")
        )
        stops = "  ".join(f"{clean_field(r, 40)} {n}" for r, n in audit.stops)
        lines.append(f"stops by reason  {stops or 'none'}")
        oldest = f" (oldest {audit.oldest_pending_s} s)" if audit.pending else ""
        lines.append(f"pending approvals  {audit.pending}{oldest}")
        lines += _runs_table("runs with the most spend", audit.by_spend)
        lines += _runs_table("runs with the most handoffs", audit.by_handoffs)
    for view in metrics:
        lines += _metrics_lines(view, previous.get(view.url))
    if not metrics:
        lines.append("metrics: none (pass --metrics URL; `baton up` records its worker's)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command
@contextmanager
def _audit_reader(settings: Any) -> Iterator[Callable[[str], list[tuple[Any, ...]]]]:
    from baton.sinks.clickhouse import connect

    client = connect(
        settings.clickhouse_dsn, ca_cert=settings.clickhouse_ca, verify=settings.clickhouse_verify
    )
    try:
        yield lambda sql: list(client.query(sql).result_rows)
    finally:
        client.close()


def _frame_audit(
    query: Callable[[str], list[tuple[Any, ...]]], window: int, runs: int
) -> AuditView:
    from baton.schemas.errors import BatonError

    try:
        return read_audit(query, window, runs)
    except BatonError as exc:  # a restarting sink: show it, keep refreshing
        return AuditView(window, error=clean_field(str(exc), 300))
    except Exception as exc:  # clickhouse-connect's errors: one line, the DSN's token masked
        from baton.schemas.redact import mask_credentials

        text = mask_credentials(f"{type(exc).__name__}: {exc}")
        return AuditView(window, error=clean_field(text, 300))


@click.command("top")
@click.option("--once", is_flag=True, help="print one frame and exit (no screen control codes)")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.5, max=3600),
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
    envvar="BATON_METRICS_URL",
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
    "https:// also BATON_CLICKHOUSE_CA and BATON_CLICKHOUSE_VERIFY]",
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
    with _audit_reader(settings) as query:
        try:
            while True:
                audit = _frame_audit(query, window, runs)
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
