"""One ``baton top`` frame as text, pure: every name from the audit through ``clean_field``."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from baton.cli.top_audit import AuditView
from baton.cli.top_metrics import MetricsView, quantile
from baton.sinks.alert_text import clean_field

__all__ = ["render_frame"]


def _count(value: float) -> str:
    """A sample as a whole number; "?" for NaN or infinity (a page that is not ours), which
    int() would raise on and end the view."""
    return str(int(value)) if math.isfinite(value) else "?"


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
