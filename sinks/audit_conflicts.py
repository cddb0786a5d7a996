"""Decision ids under which the audit received records that say different things.

Why: ``governance.decisions`` keeps one row per decision id (ReplacingMergeTree), and ids are
derived from the request, so a writer of gov.decisions who reads the requests can publish a
forged ``allow`` under the id the worker will use, before the worker's own decision. A
waiting client may take it (the SDK cannot tell, docs/security.md), and the worker's row then
replaced it in FINAL and in merges: the one record that made the client proceed left no row.

Migration 0006 keeps every distinct (outcome, reason, chain hash) said under an id in
``governance.decision_variants`` (a materialized view on every insert: any order, one block
or two, one sink process or several; no lookup in the sink) and lists the ids with more than
one in the view ``governance.decision_conflicts``. This module reads that view for
`baton audit verify` (which fails on any) and `baton trace` (which warns).

Not told apart: which record is the worker's (the chain says which one links, when the key is
set); a forged record that repeats the worker's outcome, reason and chain hash (it says
nothing the audit lacks); a worker restarted under at-least-once that decided a request
again after its first answer was published (same outcome and reason, another chain hash:
``differs`` is false and `baton audit verify` counts it without failing; it may also be a
forged copy saying what the worker said, which is harmless to a client).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from baton.sinks.schema import DATABASE

__all__ = ["IdConflict", "chunked_rows", "load_conflicts", "replaced_starts", "run_where"]

#: conflicts read at most (a flood of forged ids must not fill a verify's memory)
MAX_CONFLICTS = 10_000
#: values a query's array parameter holds at most (the queries for a run list go in pieces)
CHUNK = 1_000
#: what the conflicts stand on: the view read, the table it reads and the materialized view
#: that fills it on every insert (without it, records inserted since leave no variant and an
#: empty list would pass them: the ids are "not checked" instead)
_PARTS = ("decision_conflicts", "decision_variants", "decision_variants_mv")


@dataclass(frozen=True, slots=True)
class IdConflict:
    """One decision id and what each of its records said."""

    tenant: str
    run_id: str
    decision_id: str
    #: (outcome, reason, chain hash, partition, offset, decided_at) per record, read order
    said: tuple[tuple[Any, ...], ...]
    why: str
    #: the records differ in outcome or reason (not only in chain hash: a re-decision)
    differs: bool = True

    def describe(self, shown: Any = str) -> str:
        """One line: the id, then each record (outcome/reason at partition@offset), why."""
        parts = [
            f"{s[0]}/{shown(str(s[1])[:64])} at {s[3]}@{s[4]}"
            for s in sorted(self.said, key=lambda s: (s[3], s[4]))
        ]
        return (
            f"decision {shown(self.decision_id[:80])} of run {shown(self.run_id[:80])}: "
            f"{len(self.said)} records ({'; '.join(parts[:4])}"
            f"{'; ...' if len(parts) > 4 else ''}): {self.why}"
        )


def run_where(run_id: str | None, since: datetime | None) -> tuple[list[str], dict[str, Any]]:
    """The WHERE terms (and their parameters) of `baton audit verify`'s and the conflicts'
    reads: one run, or the runs with a decision at or after ``since``."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if run_id is not None:
        where.append("run_id = {run_id:String}")
        params["run_id"] = run_id
    if since is not None:
        where.append(
            f"run_id IN (SELECT DISTINCT run_id FROM {DATABASE}.decisions "
            "WHERE decided_at >= {since:DateTime64(6, 'UTC')})"
        )
        params["since"] = since
    return where, params


def load_conflicts(
    client: Any, run_id: str | None = None, since: datetime | None = None
) -> list[IdConflict] | None:
    """The ids of ``run_id`` (or of the runs with a decision at or after ``since``; or of
    every run) under which the audit holds records that say different things; None when the
    audit's schema predates migration 0006 (no sink of this version started on it yet) or
    lacks a part of it (``_PARTS``: the ids cannot be checked)."""
    if not _has_parts(client):
        return None
    where, params = run_where(run_id, since)
    sql = (
        f"SELECT tenant, run_id, decision_id, said, why, differs FROM {DATABASE}.decision_conflicts"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    # the ones that differ in outcome or reason first: re-decisions after a crash cannot
    # push them past the limit
    sql += f" ORDER BY differs DESC, tenant, run_id, decision_id LIMIT {MAX_CONFLICTS}"
    rows = client.query(sql, parameters=params).result_rows
    return [
        IdConflict(str(t), str(r), str(d), tuple(tuple(s) for s in said), str(why), bool(dif))
        for t, r, d, said, why, dif in rows
    ]


def _has_parts(client: Any) -> bool:
    """The audit holds every part of migration 0006 (``_PARTS``)."""
    exists = client.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} "
        "AND name IN {t:Array(String)}",
        parameters={"db": DATABASE, "t": list(_PARTS)},
    ).result_rows
    return bool(exists) and int(exists[0][0]) == len(_PARTS)


def replaced_starts(client: Any, links: Mapping[str, tuple[datetime, str]]) -> set[str]:
    """The run ids of ``links`` (run id -> (its first row read's time, the link that row
    names): `baton replay`'s runs read as trimmed) whose named link is the chain hash of a
    record the audit received under a decision id that holds another record now (FINAL):
    the run's chain start was replaced by a copy under its id (one without a chain: a writer
    of gov.decisions), not trimmed. A start retention deleted has no row left under its id;
    one before --since still holds its own. Without migration 0006: none found."""
    pairs = [(run_id, link) for run_id, (_, link) in links.items() if link]
    if not pairs or not _has_parts(client):
        return set()
    named: dict[tuple[str, str], str] = {}  # (run, decision id) -> the link it held
    for run_id, decision_id, link in chunked_rows(
        client,
        f"SELECT run_id, decision_id, chain_hash FROM {DATABASE}.decision_variants "
        "WHERE has({values:Array(Tuple(String, String))}, (run_id, chain_hash))",
        pairs,
    ):
        named[(str(run_id), str(decision_id))] = str(link)
    replaced: set[str] = set()
    for run_id, decision_id, link in chunked_rows(
        client,
        f"SELECT run_id, decision_id, ifNull(chain_hash, '') FROM {DATABASE}.decisions FINAL "
        "WHERE has({values:Array(Tuple(String, String))}, (run_id, decision_id))",
        list(named),
    ):
        if named.get((str(run_id), str(decision_id))) != str(link):
            replaced.add(str(run_id))
    return replaced


def chunked_rows(client: Any, sql: str, values: list[Any]) -> Iterator[Any]:
    """The rows of ``sql`` (its array parameter named ``values``) over ``values`` in pieces
    of ``CHUNK``: a run list of any length in queries of a bounded size."""
    for at in range(0, len(values), CHUNK):
        yield from client.query(sql, parameters={"values": values[at : at + CHUNK]}).result_rows
