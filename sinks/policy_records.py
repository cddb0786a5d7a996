"""The workers' ``policy_in_force`` records: the policy documents a replay or a restart decides
with, read a page at a time.

A worker records the policy it decides under (processors/recorded.py: run and tenant ``*``,
the document its version hashes); one whose document is no policy, or hashes to another
version, is no worker's (a forged or damaged row) and is named, not used. A writer of
gov.decisions can store a megabyte document under each record it forges: the records are
read a few at a time (270 MB of them took 2.2 GB when read whole, at every restart and
replay: session 42), so memory holds a page and the policies that verify.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from baton.processors.chain_links import shown_id
from baton.processors.recorded import POLICY_RECORD_RUN
from baton.schemas.decision import Phase, Reason
from baton.schemas.policy import Policy
from baton.sinks.schema import DATABASE

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

__all__ = ["PAGE_ROWS", "policies_of", "read_policies"]

#: records a query: a document is at most the sink's largest record (1 MB), so a page holds
#: at most 32 MB of them; an audit holds a record a policy version a worker started with
PAGE_ROWS = 32
# the records' run and tenant ("*") first: the table's key, so the FINAL query reads their
# rows only, not the whole table (0.28 -> 0.01 s of CPU at 480k decisions, at the start of
# every replay while its --jobs processes wait)
_SQL = (
    f"SELECT decision_id, policy_version, input FROM {DATABASE}.decisions FINAL "
    f"WHERE tenant = '{POLICY_RECORD_RUN}' AND run_id = '{POLICY_RECORD_RUN}' "
    f"AND phase = '{Phase.CONTROL.value}' AND reason = '{Reason.POLICY_IN_FORCE.value}' "
    "AND decision_id > {after:String} ORDER BY decision_id LIMIT {rows:UInt32}"
)


def read_policies(client: Client) -> tuple[dict[str, Policy], list[str]]:
    """version -> policy from the policy_in_force records (run and tenant ``*``: a copy under
    another run is no worker's record, not read), and one line per refused record."""
    policies: dict[str, Policy] = {}
    refused: list[str] = []
    after = ""
    while True:
        rows = client.query(_SQL, parameters={"after": after, "rows": PAGE_ROWS}).result_rows
        page, named = policies_of((version, document) for _, version, document in rows)
        policies.update(page)
        refused += named
        if len(rows) < PAGE_ROWS:
            return policies, refused
        after = str(rows[-1][0])


def policies_of(rows: Iterable[Sequence[Any]]) -> tuple[dict[str, Policy], list[str]]:
    """version -> policy of the (version, document) ``rows`` of policy_in_force records, and
    one line per refused record (a document that is no policy, or hashes to another version)."""
    policies: dict[str, Policy] = {}
    refused: list[str] = []
    for version, document in rows:
        try:
            policy = Policy.model_validate_json(document or "")
        except ValidationError as exc:
            problem = str(exc).replace("\n", " ")[:400].encode("unicode_escape").decode()
            refused.append(
                f"policy {shown_id(version)}: its record is not a policy document ({problem})"
            )
            continue
        if policy.version != version:
            refused.append(f"policy {shown_id(version)}: its document hashes to {policy.version}")
            continue
        policies[version] = policy
    return policies, refused
