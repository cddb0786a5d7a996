"""Checks the runs' decision hash chains in the audit: which runs lost, changed or gained rows.

The worker links every decision that changes a run's state to the one before it
(``baton.processors.chain``); this module walks those links in rows read back from
ClickHouse (``FINAL``, one row per ``decision_id``) and names every run whose chain does
not hold, with what is wrong:

* ``altered``: a row's ``chain_hash`` is not the hash of its own content and link (a
  column was changed after the worker wrote it);
* ``missing``: a row names a predecessor that is not in the audit (a row was deleted, or
  trimmed by retention: ``partial`` runs start past the retention horizon);
* ``forked``: two rows name the same predecessor (a row was inserted out of band);
* ``unlinked``: a chained row that no walk from the run's first decision reaches.

Not detected: rows deleted from the *end* of a run (the audit alone cannot know the run's
head; the worker's state does), and, without ``BATON_AUDIT_CHAIN_KEY``, a forged row that
its author linked correctly at the end of a run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from baton.schemas.decision import CHAIN_FIELDS, chain_hash

__all__ = ["CHAIN_COLUMNS", "RunChain", "verify_chains"]

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


def verify_chains(
    rows: Iterable[Sequence[Any]], key: bytes = b"", *, partial: frozenset[str] = frozenset()
) -> list[RunChain]:
    """Verify the chains in ``rows`` (CHAIN_COLUMNS order); one RunChain per run, sorted.

    ``partial``: runs known to start before the retention horizon; their first link may
    point at a row that was expired, which is then not reported as missing.
    """
    by_run: dict[str, list[Sequence[Any]]] = defaultdict(list)
    for row in rows:
        if row[3] is None:  # outside any chain (control records, refusals of no state)
            continue
        by_run[row[0]].append(row)
    out = []
    for run_id in sorted(by_run):
        out.append(_verify_run(run_id, by_run[run_id], key, run_id in partial))
    return out


def _verify_run(run_id: str, rows: list[Sequence[Any]], key: bytes, partial: bool) -> RunChain:
    verdict = RunChain(run_id, len(rows))
    by_hash: dict[str, Sequence[Any]] = {}
    children: dict[str, list[Sequence[Any]]] = defaultdict(list)
    for row in rows:
        decision_id, prev, stored = row[1], row[2] or "", row[3]
        content = row[4:]
        if chain_hash(key, prev, content) != stored:
            verdict.problems.append(
                f"altered: decision {decision_id} does not hash to its chain_hash"
            )
        by_hash[stored] = row
        children[prev].append(row)
    for prev, rows_after in children.items():
        if len(rows_after) > 1:
            ids = ", ".join(sorted(str(r[1]) for r in rows_after))
            verdict.problems.append(f"forked: decisions {ids} all follow {prev or 'the start'}")
        if prev and prev not in by_hash and not partial:
            ids = ", ".join(sorted(str(r[1]) for r in rows_after))
            verdict.problems.append(
                f"missing: decision {ids} follows {prev}, which is not in the audit"
            )
    # every row must be reachable from a start ("" or, for a partial run, a missing link)
    starts = [""] if not partial else ["", *(p for p in children if p and p not in by_hash)]
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        head = todo.pop()
        for row in children.get(head, ()):
            if row[3] not in seen:
                seen.add(row[3])
                todo.append(row[3])
    unreached = [r for r in rows if r[3] not in seen]
    if unreached and not any(p.startswith("missing") for p in verdict.problems):
        ids = ", ".join(sorted(str(r[1]) for r in unreached))
        verdict.problems.append(f"unlinked: decisions {ids} are not reached from the run's start")
    return verdict
