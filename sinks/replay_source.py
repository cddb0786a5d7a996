"""What `baton replay` reads from the audit: each run's recorded decisions, and the policies.

Rows come from ``governance.decisions FINAL`` (one row per decision: a redelivered copy folds,
a re-emitted one is never stored) in each run's order: ``decided_at``, then where the sink
read it (``audit_partition``, ``audit_offset``: a run's decisions share one partition of
the decisions topic and were published in the order they were made). The control
follower's records (kill switches, policy updates) are not run steps. Policies come from the
workers' ``policy_in_force`` records; one whose document does not hash to the version it
claims is not used (a forged or damaged row).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client
from pydantic import ValidationError

from baton.processors.replay import REPLAY_COLUMNS
from baton.schemas.decision import Phase, Reason
from baton.schemas.policy import Policy
from baton.sinks.schema import DATABASE

__all__ = ["ReplayScope", "read_commands", "read_policies", "read_runs_rows"]

_DECIDED_AT = REPLAY_COLUMNS.index("decided_at")
#: a record of the control follower (a kill switch, a release, a policy update, applied or
#: refused: its request id starts with the command's type), not a step of the run it names
_FOLLOWER_RECORD = (
    f"phase = '{Phase.CONTROL.value}' AND (input IS NULL OR "
    "match(request_id, '^(kill_switch|kill_switch_released|policy_updated):'))"
)
#: the commands `baton up` re-issues on a fresh broker, in the order they were applied
_COMMANDS_SQL = f"""
SELECT input FROM {DATABASE}.decisions FINAL
WHERE phase = '{Phase.CONTROL.value}' AND input IS NOT NULL
  AND reason IN ('{Reason.KILL_SWITCH.value}', '{Reason.KILL_SWITCH_RELEASED.value}',
                 '{Reason.POLICY_UPDATED.value}')
ORDER BY decided_at, audit_partition, audit_offset
"""
#: rows per query: bounds the memory of a long replay (a run is never split: see below)
_PAGE = 50_000


@dataclass(frozen=True, slots=True)
class ReplayScope:
    """Which recorded decisions to replay (None: no bound)."""

    since: datetime | None = None
    until: datetime | None = None
    run_id: str | None = None
    tenant: str | None = None
    #: only runs with a decision at or after this time, each read whole (restoring live runs)
    active_since: datetime | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        # a run's steps; not the control follower's records (kill switches, policy updates:
        # no input, they belong to no run step) nor the workers' policy documents. A run's
        # finish is a control-phase decision of the run, with its input: it is a step
        clauses = [f"NOT ({_FOLLOWER_RECORD})", f"reason != '{Reason.POLICY_IN_FORCE.value}'"]
        params: dict[str, Any] = {}
        if self.since is not None:
            clauses.append("decided_at >= {since:DateTime64(6, 'UTC')}")
            params["since"] = self.since
        if self.until is not None:
            clauses.append("decided_at < {until:DateTime64(6, 'UTC')}")
            params["until"] = self.until
        if self.run_id is not None:
            clauses.append("run_id = {run_id:String}")
            params["run_id"] = self.run_id
        if self.tenant is not None:
            clauses.append("tenant = {tenant:String}")
            params["tenant"] = self.tenant
        if self.active_since is not None:
            clauses.append(
                f"run_id IN (SELECT run_id FROM {DATABASE}.decisions "
                "WHERE decided_at >= {active_since:DateTime64(6, 'UTC')})"
            )
            params["active_since"] = self.active_since
        return " AND ".join(clauses), params


def read_policies(client: Client) -> tuple[dict[str, Policy], list[str]]:
    """version -> policy from the policy_in_force records, and one line per refused record."""
    rows = client.query(
        f"SELECT policy_version, input FROM {DATABASE}.decisions FINAL "
        f"WHERE phase = '{Phase.CONTROL.value}' AND reason = '{Reason.POLICY_IN_FORCE.value}'"
    ).result_rows
    policies: dict[str, Policy] = {}
    refused: list[str] = []
    for version, document in rows:
        try:
            policy = Policy.model_validate_json(document or "")
        except ValidationError as exc:
            refused.append(f"policy {version}: its record is not a policy document ({exc})")
            continue
        if policy.version != version:
            refused.append(f"policy {version}: its document hashes to {policy.version}")
            continue
        policies[version] = policy
    return policies, refused


def read_commands(client: Client) -> list[str]:
    """The applied kill switches, releases and policy updates, as the events that made them."""
    return [str(row[0]) for row in client.query(_COMMANDS_SQL).result_rows]


def read_runs_rows(client: Client, scope: ReplayScope) -> Iterator[tuple[Any, ...]]:
    """Every recorded decision in ``scope``, in REPLAY_COLUMNS order, run by run in order.

    Paged by run id (a page ends at a run boundary: the runs of each page are read whole),
    so memory holds about one page of rows, never the whole audit.
    """
    where, params = scope.where()
    columns = ", ".join(f"`{c}`" for c in REPLAY_COLUMNS)
    after = ""
    while True:
        page_where = where + (" AND run_id > {after:String}" if after else "")
        page_params = {**params, "after": after} if after else params
        # the runs of this page: whole runs, about _PAGE rows
        last = client.query(
            f"SELECT max(run_id) FROM (SELECT run_id FROM {DATABASE}.decisions "
            f"WHERE {page_where} ORDER BY run_id LIMIT {_PAGE})",
            parameters=page_params,
        ).result_rows
        if not last or not last[0][0]:
            return
        upto = last[0][0]
        rows = client.query(
            f"SELECT {columns} FROM {DATABASE}.decisions FINAL "
            f"WHERE {page_where} AND run_id <= {{upto:String}} "
            "ORDER BY run_id, decided_at, audit_partition, audit_offset",
            parameters={**page_params, "upto": upto},
        ).result_rows
        for row in rows:
            yield _utc(row)
        after = upto


def _utc(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """decided_at as an aware UTC time (clickhouse-connect returns it without a zone; the
    engine's clock must be aware)."""
    at = row[_DECIDED_AT]
    if at.tzinfo is not None:
        return row
    out = list(row)
    out[_DECIDED_AT] = at.replace(tzinfo=UTC)
    return tuple(out)
