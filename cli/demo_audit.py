"""The demo's closing audit: its decisions counted in ClickHouse once the sink has them all."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import click

from baton.cli.demo_play import SEED_RUN
from baton.schemas.errors import AuditUnavailable
from baton.schemas.redact import mask_credentials

if TYPE_CHECKING:
    from baton.schemas.decision import Decision

__all__ = ["audit_summary", "decided_since"]


def decided_since(decisions: Iterable[Decision], since: datetime) -> int:
    """How many of ``decisions`` were decided at or after ``since``: the ones the audit's
    window holds. A request id the audit already has (the seed run's ``run_742:h1`` on a
    data dir an earlier demo used) is answered from the record of its first request, with
    that request's time, outside the window: counting it made the audit "miss" it, and
    the demo waited 60 s and exited 1."""
    return sum(1 for d in decisions if d.decided_at is None or d.decided_at >= since)


def _sql(url: str, query: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Rows of ``query`` from a ClickHouse HTTP endpoint (``baton up``'s sql=...).

    The DSN's ``user:token@`` goes in as HTTP Basic auth (urllib would read it as part of
    the host name), and never into a message."""
    parts = urlsplit(url)
    netloc = parts.hostname or "127.0.0.1"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    plain = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    headers = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    label = mask_credentials(url)
    request = urllib.request.Request(
        plain, data=f"{query} FORMAT JSONEachRow".encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read().decode()
    except urllib.error.HTTPError as exc:
        raise AuditUnavailable(
            f"ClickHouse at {label} refused {query!r}: {exc.read().decode(errors='replace')[:300]}"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise AuditUnavailable(f"cannot reach ClickHouse at {label}: {exc}") from exc
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def audit_summary(
    url: str,
    run_prefix: str,
    expected: int,
    since: datetime,
    timeout: float = 60.0,
    *,
    commands: bool = True,
) -> str | None:
    """Print the audit of the demo's runs once the sink has them all; a problem, or None.
    ``commands``: show the `baton sql` line of each query (only for a stack that stays)."""
    where = (
        f"(startsWith(run_id, '{run_prefix}') OR (run_id = '{SEED_RUN}' AND decided_at >= "
        f"parseDateTime64BestEffort('{since.isoformat()}', 6)))"
    )
    count_sql = f"SELECT count() AS n FROM governance.decisions FINAL WHERE {where}"
    deadline = time.monotonic() + timeout
    have, last_error = 0, ""
    while time.monotonic() < deadline:
        try:
            have = int(_sql(url, count_sql)[0]["n"])
            last_error = ""
        except (AuditUnavailable, KeyError, IndexError) as exc:  # sink still starting
            last_error = str(exc)
        if have >= expected:
            break
        time.sleep(0.5)
    else:
        return (
            f"audit: ClickHouse has {have} of the {expected} decisions the demo received "
            f"after {timeout:g} s{f' ({last_error})' if last_error else ''}"
        )
    click.echo(
        f"  the sink has all {expected:,} decisions of this demo (governance.decisions at {url})"
    )
    queries = [
        (
            "decisions by outcome and reason",
            f"SELECT outcome, reason, count() AS decisions FROM governance.decisions FINAL "
            f"WHERE {where} GROUP BY outcome, reason ORDER BY decisions DESC",
        ),
        (
            "per run",
            f"SELECT uniqExact(run_id) AS runs, countIf(phase = 'pre_handoff') AS checks, "
            f"countIf(outcome = 'stop') AS stops, countIf(phase = 'approval') AS approvals, "
            f"max(spent_usd) AS max_run_spend_usd FROM governance.decisions FINAL WHERE {where}",
        ),
    ]
    for title, query in queries:
        rows = _sql(url, query)
        click.echo(
            f'\n  {title}:  baton sql --dsn {url} "{query}"' if commands else f"\n  {title}:"
        )
        if rows:
            columns = list(rows[0])
            widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
            click.echo("    " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
            for r in rows:
                click.echo(
                    "    "
                    + "  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True))
                )
    return None
