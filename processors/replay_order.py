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

Never reordered into what the chain does not say: a gap (a row names a link no row of the
run holds, after the run's chain started in what was read), a fork (two rows name one
predecessor), interleaved chains, or linked rows no walk from a start reaches (a cycle)
make the run *broken*: returned in the read order with the reason, not to be replayed.
A run whose chain starts before what was read (retention, ``--since``: no row starts a
chain) is returned as read: ``replay_steps.is_partial`` names it. One that holds a start
and a row whose link is missing is broken, even if that row was read first (a row deleted
and a clock step back look alike; so, rarely, does a ``--since`` that cuts into the old
chain of a run id that came back: fail closed).
"""

from __future__ import annotations

from itertools import pairwise

from baton.processors.recorded import Recorded

__all__ = ["in_chain_order"]

_PREV, _HASH = Recorded._fields.index("chain_prev"), Recorded._fields.index("chain_hash")


def in_chain_order(run: list[Recorded]) -> tuple[list[Recorded], str | None]:
    """``run``'s rows in their chain's order, and why the chain cannot give one (None: it
    does; the rows are then ``run`` itself when the read order already follows it)."""
    head: str | None = None
    for rec in run:
        link = rec[_HASH]
        if link is None:
            continue
        prev = rec[_PREV] or ""
        if prev != head and prev != "":
            return _reordered(run)
        head = link
    return run, None


def _reordered(run: list[Recorded]) -> tuple[list[Recorded], str | None]:
    """The slow path of :func:`in_chain_order`: the read order disagrees with the links."""
    linked = [(i, rec) for i, rec in enumerate(run) if rec[_HASH] is not None]
    hashes = {rec[_HASH] for _, rec in linked}
    children: dict[str, list[tuple[int, Recorded]]] = {}
    starts: list[tuple[int, Recorded]] = []
    missing: list[Recorded] = []
    for i, rec in linked:
        prev = rec[_PREV] or ""
        if prev == "":
            starts.append((i, rec))
        elif prev not in hashes:
            missing.append(rec)
        else:
            children.setdefault(prev, []).append((i, rec))
    if not starts:
        return run, None  # the chain starts before what was read: is_partial names it
    if missing:
        rec = missing[0]
        return run, (
            f"its chain of decisions is broken: decision {rec.decision_id} follows a link "
            f"({(rec[_PREV] or '')[:16]}...) that no row of the run holds (a row deleted or "
            "altered)"
        )
    for prev, after in children.items():
        if len(after) > 1:
            ids = " and ".join(rec.decision_id for _, rec in after)
            return run, (
                f"its chain of decisions is broken: decisions {ids} both follow the link "
                f"{prev[:16]}... (a row inserted or altered)"
            )
    chains: list[list[tuple[int, Recorded]]] = []
    for start in starts:
        chain = [start]
        nxt = children.get(start[1][_HASH])
        while nxt is not None and len(chain) <= len(linked):
            chain.append(nxt[0])
            nxt = children.get(nxt[0][1][_HASH])
        chains.append(chain)
    reached = sum(len(c) for c in chains)
    if reached != len(linked):
        return run, (
            f"its chain of decisions is broken: {len(linked)} rows are linked, {reached} are "
            "reached from the run's start (rows that link to each other in a loop: altered)"
        )
    for before, after in pairwise(chains):
        if max(i for i, _ in before) > min(i for i, _ in after):
            return run, (
                f"its chain of decisions is broken: decision {after[0][1].decision_id} starts "
                f"a new chain amid the one begun by {before[0][1].decision_id} (a row "
                "inserted or altered)"
            )
    return _with_unlinked(run, [i for chain in chains for i, _ in chain]), None


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
