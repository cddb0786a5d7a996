"""A run's recorded rows put in the order its decision hash chain says they were made.

The audit gives a run's rows by ``decided_at`` (then where the sink read them): the
worker's clock. A worker whose clock stepped back between two batches of a run (NTP, a
resumed VM) decided a later step at an earlier time, and the read order is then not the
order of the decisions. Their chain is: each linked row names the ``chain_hash`` of the
run's row before it (``processors.chain``). :func:`in_chain_order` checks the read order
against the links (one pass, no copy: the cost of every run read in order) and, where they
disagree, puts the linked rows in their chain's order:

* **linked rows**: each after the row its ``chain_prev`` names; a run may hold several
  chains (a run id new again after the worker forgot its tombstone starts one, from ``""``),
  taken in the read order of their first rows, and each must be read wholly before the
  next (a new chain starts only after the old one ended, hours later);
* **rows without a link** (refusals that change no state: ``request_id_reused``,
  ``worker_run_limit``; rows of an audit older than the chain; the sweep's timer decisions
  are linked): each stays right after the
  linked row it followed in the read (it moves with it); those read before any linked row
  stay first. Deterministic, and exact when the clock did not step back around them.

Never reordered into what the chain does not say: the links are walked by
:func:`baton.processors.chain_links.walk_links`, the walk ``baton audit verify`` makes too
(a gap, a fork, interleaved chains or a loop make the run *broken*: returned in the read
order with the reason, not to be replayed). A run whose chain starts before what was read
(retention, ``--since``: no row starts a chain, one link alone is missing) is returned as
read, or, when later lives follow that first chain (retention expiring a run id's earlier
life, a ``--since`` cutting into it), in their chains' order: ``replay_steps.is_partial`` names
it. One whose missing link is read after a chain start is broken (a row deleted and a clock
step back look alike: fail closed).
"""

from __future__ import annotations

from typing import Final

from baton.processors.chain_links import Link, walk_links
from baton.processors.recorded import Recorded

__all__ = ["from_first_start", "in_chain_order"]

_PREV: Final = Recorded._fields.index("chain_prev")
_HASH: Final = Recorded._fields.index("chain_hash")
#: what replay says of a run whose links give no order
BROKEN: Final = "its chain of decisions is broken: "


def in_chain_order(run: list[Recorded]) -> tuple[list[Recorded], str | None]:
    """``run``'s rows in their chain's order, and why the chain cannot give one (None: it
    does; the rows are then ``run`` itself when the read order already follows it)."""
    head: str | None = None
    hashes: set[str] = set()
    for rec in run:
        link: str | None = rec[_HASH]  # type: ignore[assignment]  # the field at _HASH
        if link is None:
            continue
        prev: str = rec[_PREV] or ""  # type: ignore[assignment]
        if (prev != head and prev != "") or link in hashes:
            return _reordered(run)
        hashes.add(link)
        head = link
    return run, None


def from_first_start(run: list[Recorded]) -> list[Recorded]:
    """``run`` (in chain order) from its first chain start, when what was read begins amid an
    earlier life that a later one follows (retention expiring it: ``walk_links``); else
    ``run``. Rebuilding a run's state needs its current life only: a new life is decided on a
    fresh state, and an earlier life read from its middle cannot be rebuilt."""
    first = next((rec for rec in run if rec[_HASH] is not None), None)
    if first is None or (first[_PREV] or "") == "":
        return run
    start = next(
        (i for i, rec in enumerate(run) if rec[_HASH] is not None and not rec[_PREV]), None
    )
    return run if start is None else run[start:]


def _reordered(run: list[Recorded]) -> tuple[list[Recorded], str | None]:
    """The slow path of :func:`in_chain_order`: the read order disagrees with the links."""
    at = [i for i, rec in enumerate(run) if rec[_HASH] is not None]
    walk = walk_links(
        [
            Link(
                run[i].decision_id,
                run[i].chain_prev or "",
                run[i].chain_hash,  # type: ignore[arg-type]  # at: the linked rows
                _seconds(run[i]),
            )
            for i in at
        ],
        may_start_before=True,
    )
    if walk.broken is not None:
        return run, BROKEN + walk.broken.detail
    if walk.starts_before:
        return run, None  # the chain starts before what was read: is_partial names it
    return _with_unlinked(run, [at[i] for i in walk.order]), None


def _seconds(rec: Recorded) -> float:
    at = rec.decided_at
    return at.timestamp() if at is not None else 0.0


def _with_unlinked(run: list[Recorded], order: list[int]) -> list[Recorded]:
    """The rows at the read positions ``order`` (the linked rows in chain order), each
    followed by the unlinked rows read right after it; unlinked rows read first stay first."""
    out: list[Recorded] = []
    i = 0
    while i < len(run) and run[i][_HASH] is None:
        out.append(run[i])
        i += 1
    for pos in order:
        out.append(run[pos])
        j = pos + 1
        while j < len(run) and run[j][_HASH] is None:
            out.append(run[j])
            j += 1
    return out
