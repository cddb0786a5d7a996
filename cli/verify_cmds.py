"""``baton audit verify``: recompute the runs' decision hash chains from ClickHouse.

Reads ``CHAIN_COLUMNS`` of ``governance.decisions FINAL`` (one row per decision; a run's rows
in replay's read order: ``decided_at``, then the sink's position), walks each run's chain
with ``baton.sinks.chain_verify.verify_chains`` and the key the workers chained with
(``BATON_AUDIT_CHAIN_KEY``, from the environment only: never an argument, which ``ps``
shows; else the ``chain.key`` of the `baton up` stack whose audit this is: ``cli/chain_keys``),
and names every run whose rows were deleted, altered or inserted out of band.

``--since T`` checks the runs that have a decision at or after T, each from its first row (a
run cut at T would look like one whose earlier rows were deleted). Runs whose oldest row is
within a day of the retention horizon (``BATON_AUDIT_TTL_DAYS``) are checked
as partial: their first link may name a row that retention removed. Not detected here (see
chain_verify): rows deleted from the end of a run, and without the key a forged row appended
at a run's end.

Command records (kill switches, releases, policy updates: they belong to no run): every
applied one in ``governance.control_log`` stored after migration 0010 (and ``--since``) must
carry a worker's seal that verifies (``processors/control_seal``) with BATON_AUDIT_CHAIN_KEY or
the stack's seal.key (``DATA_DIR/worker``, found beside a ``chdb://DATA_DIR/chdb`` audit); each
that does not is named ``FORGED`` and fails the check, unless no record's seal verifies at all
(no key here, or an audit from before the seals: said as not checked).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from baton.cli.audit_options import audit_client, dsn_option, query_settings
from baton.cli.help_listing import SentenceGroup
from baton.cli.options import build_settings
from baton.cli.wording import counted
from baton.sinks.schema import DATABASE

__all__ = ["register"]

#: problems shown per run; the rest are counted
_SHOWN = 3
#: forged command records named one a line (the summary counts them all)
_SHOWN_FORGED = 20
_RELATIVE = re.compile(r"(\d{1,6})\s*([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO time (UTC when it names no zone) or an age: 90s, 30m, 12h, 7d."""
    if value is None:
        return None
    m = _RELATIVE.fullmatch(value.strip())
    if m:
        return datetime.now(UTC) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected an ISO time (2026-11-25T09:00:00Z, 2026-11-25) or an age (30m, 12h, "
            f"7d), got {value[:60]!r}"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _columns() -> str:
    from baton.sinks.chain_verify import CHAIN_COLUMNS

    return ", ".join(f"`{c}`" for c in CHAIN_COLUMNS)


def _query(run_id: str | None, since: datetime | None) -> tuple[str, dict[str, Any]]:
    from baton.sinks.audit_conflicts import run_where

    where, params = run_where(run_id, since)
    sql = f"SELECT {_columns()} FROM {DATABASE}.decisions FINAL"
    if where:
        sql += " WHERE " + " AND ".join(where)
    # replay's read order (sinks/replay_source.py): the chain walk judges a run's later
    # chain start by where it was read, so both commands must read a run alike
    sql += " ORDER BY run_id, decided_at, audit_partition, audit_offset"
    return sql, params


def _refused_forged(client: Any, since: datetime | None) -> tuple[int, str]:
    """How many records the sink rejected for want of the workers' audit MAC (``forged``,
    schemas/record_mac.py) since ``since``, and where the first was read ("" when none)."""
    sql = (
        f"SELECT count(), argMin(concat(toString(audit_partition), '@', "
        f"toString(audit_offset)), inserted_at) FROM {DATABASE}.rejected FINAL "
        "WHERE error_kind = 'forged'"
    )
    params: dict[str, Any] = {}
    if since is not None:
        sql += " AND inserted_at >= {since:DateTime64(6, 'UTC')}"
        params["since"] = since
    count, first = client.query(sql, parameters=params).result_rows[0]
    return int(count), str(first) if count else ""


def _partial_runs(rows: Sequence[Sequence[Any]], horizon: datetime) -> frozenset[str]:
    """Runs whose oldest chained row is near the retention horizon: older rows may have
    expired. Chained rows only: a row outside every chain (a stop, a refusal) is what any
    writer of gov.decisions may add, and one dated at the retention's edge made any run
    partial, so the deletion of its first row passed verify (session 17)."""
    from baton.schemas.decision import CHAIN_FIELDS

    # a row expires audit_ttl_days after inserted_at (sinks/schema.py TTL_TABLES), and the
    # sink's window stores none more than a day before its decided_at: only a row decided
    # before the horizon (a day inside the retention) may have expired
    at = 4 + CHAIN_FIELDS.index("decided_at")
    oldest: dict[str, datetime] = {}
    for row in rows:
        t = row[at]
        if row[3] is not None and t is not None and (row[0] not in oldest or t < oldest[row[0]]):
            oldest[row[0]] = t
    return frozenset(run for run, t in oldest.items() if t < horizon)


@click.group("audit", cls=SentenceGroup)
def audit_group() -> None:
    """Check the audit trail itself."""


@audit_group.command("verify")
@click.option("--run", "run_id", default=None, help="check this run only")
@click.option(
    "--since",
    callback=_since,
    default=None,
    help="check the runs with a decision at or after this time (ISO, UTC unless a zone is "
    "given) or within this age (30m, 12h, 7d); each run from its first row",
)
@dsn_option
def verify_cmd(
    run_id: str | None, since: datetime | None, clickhouse_dsn: str | None, data_dir: Path | None
) -> None:
    """Recompute every run's decision hash chain from the audit; print one line per run whose
    rows were deleted, altered or inserted out of band, one line per decision id that holds
    records saying different things, one per applied command record no worker sealed, one for
    the records the sink refused as forged (no workers' audit MAC), and a summary. Exit 1
    when any run fails, any id conflicts, a command record is forged or the sink refused a
    forged decision record, 0 when every chain holds. The key is BATON_AUDIT_CHAIN_KEY (the
    workers', or in the file BATON_AUDIT_CHAIN_KEY_FILE names), else the chain.key of the
    `baton up` stack whose audit this is; seals verify with it or with that stack's seal.key."""
    from baton.cli.chain_keys import audit_worker_dir
    from baton.cli.restore_sealed import audit_seal_keys, read_sealed
    from baton.processors.chain_links import shown_id
    from baton.processors.control_seal import workers_chain_key
    from baton.schemas.errors import BadArgument
    from baton.sinks.audit_conflicts import MAX_CONFLICTS, load_conflicts
    from baton.sinks.chain_verify import utc_row, verify_chains
    from baton.sinks.clickhouse import audit_errors, parse_dsn
    from baton.sinks.render import shown_cut

    settings = query_settings(clickhouse_dsn, data_dir)
    sql, params = _query(run_id, since)
    target = parse_dsn(settings.clickhouse_dsn)
    label = target.label
    workers = build_settings()  # (BATON_AUDIT_CHAIN_KEY)
    worker_dir = audit_worker_dir(settings.clickhouse_dsn, data_dir)
    key = workers_chain_key(workers, worker_dir)
    seal_keys = audit_seal_keys(workers, worker_dir)
    with audit_client(settings) as client, audit_errors(label, "reading the decision chains"):
        rows = [utc_row(row) for row in client.query(sql, parameters=params).result_rows]
        found = load_conflicts(client, run_id, since)
        # the command records no worker sealed (every one: commands belong to no run)
        sealed = read_sealed(client, seal_keys, since) if seal_keys and run_id is None else None
        refused, first_refused = _refused_forged(client, since) if run_id is None else (0, "")
    forged: list[str] = []
    forged_count, checked = 0, False  # checked: some record's seal verifies here
    if sealed is not None and sealed.any_sealed:
        forged, forged_count, checked = sealed.unsealed, sealed.unsealed_count, True
    conflicts = [c for c in found or [] if c.differs]
    redecided = len(found or []) - len(conflicts)
    if run_id is not None and not rows and not conflicts:
        raise BadArgument(
            f"no decisions for run {run_id[:80]!r} in {DATABASE}.decisions at {label}"
        )
    horizon = datetime.now(UTC) - timedelta(days=settings.audit_ttl_days - 1)
    partial = _partial_runs(rows, horizon)
    verdicts = verify_chains(rows, key, partial=partial)
    failed = [v for v in verdicts if not v.ok]
    for v in failed:
        shown = "; ".join(v.problems[:_SHOWN])
        more = f" (+{len(v.problems) - _SHOWN} more)" if len(v.problems) > _SHOWN else ""
        # a row's run id is the writer's text: cut and escaped as the rows' ids are
        click.echo(f"FAIL {shown_id(v.run_id)} ({v.rows} chained rows): {shown}{more}")
    for c in conflicts:  # records under one id saying different things (migration 0006)
        click.echo(f"CONFLICT {c.describe(shown_id)}")
    for request_id in forged[:_SHOWN_FORGED]:
        click.echo(
            f"FORGED command record {shown_cut(request_id, 200)}: applied, without a worker's seal "
            "(a `baton up` restart does not issue it again)"
        )
    if refused:
        click.echo(
            f"FORGED decision records: {refused} written to the decisions topic without the "
            f"workers' audit MAC (the first at {first_refused}), refused by the sink: not in "
            f"the audit; {DATABASE}.rejected (error_kind 'forged') keeps each. Someone who "
            "is not a worker writes the topic: a client without the workers' decision key may "
            "have taken one"
        )
    chained = sum(v.rows for v in verdicts)
    summary = (
        f"audit verify: {counted(len(verdicts), 'run', commas=False)}, "
        f"{counted(chained, 'chained row', commas=False)} of {len(rows)} read "
        f"from {label}: "
    )
    failures = f"{counted(len(failed), 'run', commas=False)} FAILED"
    summary += failures if failed else "every chain holds"
    if conflicts:
        many = "at least " if len(found or []) >= MAX_CONFLICTS else ""
        summary += f"; {many}{len(conflicts)} decision ids hold records saying different things"
    if redecided:
        summary += (
            f"; {redecided} decision ids decided again with the same outcome and reason "
            "(a worker restart, or a copy changing other fields, which the chains name; "
            "governance.decision_conflicts lists them)"
        )
    if forged_count:
        summary += f"; {forged_count} command records without a worker's seal"
    elif run_id is None and not checked:
        summary += "; command records' seals not checked (no seal key here, or none sealed)"
    if refused:  # (after the seals' words: it broke their if/elif once, h45b F2)
        summary += f"; {refused} forged decision records refused by the sink"
    if found is None:
        summary += "; no governance.decision_conflicts (schema before 0006): ids not checked"
    if partial:
        runs = counted(len(partial), "run", commas=False)
        summary += f"; {runs} near the retention horizon checked from their oldest row"
    if not key:
        summary += (
            "; no chain key (BATON_AUDIT_CHAIN_KEY, or a `baton up` stack's worker/chain.key "
            "beside its audit): a forged row appended at a run's end would go unseen"
        )
    click.echo(summary)
    altered = sum(p.startswith("altered") for v in failed for p in v.problems)
    if failed and altered >= chained and len(failed) == len(verdicts):  # (h44 F5: not one)
        click.echo(
            "hint: no row of any run hashes right: is the chain key (BATON_AUDIT_CHAIN_KEY, "
            "else the stack's worker/chain.key) the one the workers chain with?",
            err=True,
        )
    sys.exit(1 if failed or conflicts or forged or refused else 0)


def register(cli: click.Group) -> None:
    cli.add_command(audit_group)
