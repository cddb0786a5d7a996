"""Checks the runs' decision hash chains in the audit: which runs lost, changed or gained rows.

The worker links every decision that changes a run's state to the one before it
(``baton.processors.chain``); this module rehashes every row read back from ClickHouse
(``FINAL``, one row per ``decision_id``, each run's rows in the audit's read order:
``decided_at``, then where the sink read them, as ``baton replay`` reads them) and walks
their links with ``baton.processors.chain_links.walk_links``, the walk replay makes: the same
rows get the same answer from both. It names every run whose chain does not hold:

* ``altered``: a row's ``chain_hash`` is not the hash of its own content and link (a
  column was changed after the worker wrote it);
* ``missing``: a row names a predecessor that is not in the audit (a row was deleted; a run
  whose oldest row is near the retention horizon, ``partial``, may begin with one);
* ``forked``: two rows name the same predecessor (a row was inserted out of band);
* ``interleaved``: a chain starts amid another (a start inserted), while a later start, read
  after the run's chain before it ended, is the run id's next life (decided as a new run once
  the worker forgot its tombstone), not a fork;
* ``unlinked``: chained rows that no walk from the run's first decision reaches (a loop);
* ``unchained``: a row without a ``chain_hash`` that does not refuse (an allow, an approval
  asked or granted): a worker links every decision that changes a run and publishes outside
  the chain only stops and recorded refusals, so such a row was written by someone else
  (a forged record on gov.decisions under an id the worker never uses, or another tenant,
  which no other row replaces and ``decision_conflicts`` does not pair). Rows an audit kept
  from before chains (migration 0004) are named so too: ``--since`` the upgrade skips them;
* ``forged control record``: a kill, release, policy update or ``policy_in_force`` record
  not in the control phase, or under an id or request id its worker does not give it (a
  copy under another phase replaced the worker's in ``FINAL``; control rows are not chained).

Not detected: rows deleted from the *end* of a run (the audit alone cannot know the run's
head; the worker's state does), or from the end of any of its lives, or a whole earlier life
(a later life's chain starts from ``""`` and cannot name the one before); and, without
``BATON_AUDIT_CHAIN_KEY``, a forged row that its author linked correctly at the end of a run,
or a forged earlier life chained from ``""`` before the run's first row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from baton.processors.chain_links import Link, shown_id, walk_links
from baton.schemas.decision import CHAIN_FIELDS, UNCHAINED_OUTCOMES, chain_hash
from baton.sinks.schema import DATABASE

__all__ = ["CHAIN_COLUMNS", "RunChain", "altered_starts", "utc_row", "verify_chains"]

#: the columns a verify reads: the run, the row's id, its links, then the hashed content
CHAIN_COLUMNS: tuple[str, ...] = (
    "run_id",
    "decision_id",
    "chain_prev",
    "chain_hash",
    *CHAIN_FIELDS,
)


@dataclass
class RunChain:
    """One run's verdict: ``problems`` is empty when its chain holds."""

    run_id: str
    rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


#: where a row's decided_at is (a datetime; the walk compares lives' times)
_AT = 4 + CHAIN_FIELDS.index("decided_at")
#: where a row's outcome is
_OUTCOME = 4 + CHAIN_FIELDS.index("outcome")
_REQUEST, _PHASE, _REASON = (4 + CHAIN_FIELDS.index(f) for f in ("request_id", "phase", "reason"))
#: the records a worker writes only for a command it applied, or a policy it came to use: in
#: the control phase, under decision_id_for(run, request id, control), request id "REASON:..."
_COMMAND_REASONS = frozenset(
    {"kill_switch", "kill_switch_released", "policy_updated", "policy_in_force"}
)


def _seconds(at: Any) -> float:
    return at.timestamp() if isinstance(at, datetime) else 0.0


def verify_chains(
    rows: Iterable[Sequence[Any]], key: bytes = b"", *, partial: frozenset[str] = frozenset()
) -> list[RunChain]:
    """Verify the chains in ``rows`` (CHAIN_COLUMNS order; a run's rows in the audit's read
    order); one RunChain per run, sorted.

    ``partial``: runs known to start before the retention horizon; their first link may
    point at a row that was expired, which is then not reported as missing.
    """
    by_run: dict[str, list[Sequence[Any]]] = defaultdict(list)
    forged: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if str(row[_REASON]) in _COMMAND_REASONS and not _made_as_a_command(row):
            forged[row[0]].append(
                f"forged control record: decision {shown_id(str(row[1]))} says {row[_REASON]} "
                f"under phase {shown_id(str(row[_PHASE]))} and an id a worker does not give it "
                "(a worker writes a command's record in the control phase, under the id of its "
                "run and request id: a copy under another phase replaced it in FINAL)"
            )
        if row[3] is None:  # outside any chain: refusals of no state, or not a worker's
            if str(row[_OUTCOME]) not in UNCHAINED_OUTCOMES:
                forged[row[0]].append(
                    f"unchained: decision {shown_id(str(row[1]))} says {row[_OUTCOME]} without "
                    "a chain_hash (a worker chains every decision that changes a run: "
                    "written by someone else)"
                )
            continue
        by_run[row[0]].append(row)
    out = []
    for run_id in sorted(by_run.keys() | forged.keys()):
        verdict = _verify_run(run_id, by_run.get(run_id, []), key, run_id in partial)
        verdict.problems.extend(forged.get(run_id, ()))
        out.append(verdict)
    return out


def _made_as_a_command(row: Sequence[Any]) -> bool:
    """A command's record as its worker writes it: control phase, request id ``REASON:...``,
    and the id its run and request id give (H2, session 36: a kill's row copied under
    another phase replaced it in FINAL, and verify said nothing)."""
    from baton.schemas.decision import decision_id_for

    request_id = str(row[_REQUEST])
    return (
        str(row[_PHASE]) == "control"
        and request_id.startswith(f"{row[_REASON]}:")
        and str(row[1]) == decision_id_for(str(row[0]), request_id, "control")
    )


def _verify_run(run_id: str, rows: list[Sequence[Any]], key: bytes, partial: bool) -> RunChain:
    verdict = RunChain(run_id, len(rows))
    for row in rows:
        if chain_hash(key, row[2] or "", row[4:]) != row[3]:
            verdict.problems.append(
                f"altered: decision {shown_id(str(row[1]))} does not hash to its chain_hash"
            )
    links = [Link(str(r[1]), r[2] or "", r[3], _seconds(r[_AT])) for r in rows]
    walk = walk_links(links, may_start_before=partial)
    if walk.broken is not None:
        verdict.problems.append(str(walk.broken))
    return verdict


def utc_row(row: Sequence[Any]) -> Sequence[Any]:
    """The times of an audit row in UTC: the columns are DateTime64(6, 'UTC'), but
    clickhouse-connect returns them without a zone (the chain hashes microseconds since the
    epoch, which needs an aware time)."""
    if not any(isinstance(v, datetime) and v.tzinfo is None for v in row):
        return row
    return [
        v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v for v in row
    ]


def altered_starts(client: Any, links: Mapping[str, tuple[datetime, str]], key: bytes) -> set[str]:
    """The run ids of ``links`` (run id -> (its first row read's time, the link that row
    names), `baton replay`'s runs read as trimmed) whose row naming that link does not hash
    to its chain_hash with ``key``, or whose named link's row was replaced under its id
    (``audit_conflicts.replaced_starts``): its start was altered, not cut by retention or
    --since."""
    from baton.sinks.audit_conflicts import chunked_rows, replaced_starts

    columns = ", ".join(f"`{c}`" for c in CHAIN_COLUMNS)
    pairs = [(run_id, link) for run_id, (_, link) in links.items() if link]
    altered: set[str] = set()
    rows = chunked_rows(
        client,
        f"SELECT {columns} FROM {DATABASE}.decisions FINAL "
        "WHERE has({values:Array(Tuple(String, String))}, (run_id, ifNull(chain_prev, '')))",
        pairs,
    )
    for row in map(utc_row, rows):
        if row[3] is None or chain_hash(key, row[2] or "", row[4:]) != row[3]:
            altered.add(str(row[0]))
    return altered | replaced_starts(client, links)
