"""``baton top``'s audit side: the queries of one frame over the last seconds of the audit.

Not guaranteed: the audit is as fresh as the sink (a second or so behind the worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from baton.cli.audit_options import audit_client
from baton.schemas.settings import Settings
from baton.sinks.alert_text import clean_field

__all__ = ["AuditView", "audit_reader", "frame_audit", "read_audit"]

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


@contextmanager
def audit_reader(settings: Settings) -> Iterator[Callable[[str], list[tuple[Any, ...]]]]:
    """``query(sql) -> rows`` over the audit client of the other audit commands."""
    with audit_client(settings) as client:
        yield lambda sql: list(client.query(sql).result_rows)


def frame_audit(query: Callable[[str], list[tuple[Any, ...]]], window: int, runs: int) -> AuditView:
    from baton.schemas.errors import BatonError

    try:
        return read_audit(query, window, runs)
    except BatonError as exc:  # a restarting sink: show it, keep refreshing
        return AuditView(window, error=clean_field(str(exc), 300))
    except Exception as exc:  # clickhouse-connect's errors: one line, the DSN's token masked
        from baton.schemas.redact import mask_credentials

        text = mask_credentials(f"{type(exc).__name__}: {exc}")
        return AuditView(window, error=clean_field(text, 300))
