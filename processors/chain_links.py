"""The one walk of a run's decision links: the order of its chains, or the break that denies one.

The worker links every decision that changes a run's state to the run's decision before it
(``processors.chain``): ``chain_prev`` names the ``chain_hash`` of the row before, ``""``
for a run's first. ``baton replay`` (``processors.replay_order``) and ``baton audit verify``
(``sinks.chain_verify``) both walk a run's rows with :func:`walk_links`, so the same rows
get the same answer from both.

A run id may hold several chains, one per *life*: a run id that comes back after the worker
forgot its tombstone (``BATON_TOMBSTONE_RETENTION_S``, 30 days; the audit keeps 365) is
decided as a new run, whose first decision starts a chain from ``""`` again. A later start
is a new life only when every row of the chain before it was read before it (the audit reads
a run by ``decided_at``; a new life begins a month after the last one ended). Refused, each
named with its rows (a row deleted, inserted or altered; fail closed):

* ``missing``: a row names a link no row of the run holds (a gap). The history may start
  before what was read (``may_start_before``: the audit's retention, ``--since``) only when
  one link alone is missing, read before any chain start: where what was read begins (a run
  id's earlier life that retention is expiring, its later lives a day or more after it);
* ``forked``: two rows name one predecessor;
* ``interleaved``: a chain starts, or goes on, amid another (two chains whose rows mix in the
  read order: a start forged into a run, never a new life);
* ``unlinked``: rows no walk from a start reaches (links in a loop).

Not judged here: whether a row's hash is its content's (verify recomputes it; replay decides
the row again and compares), and rows deleted from the end of a chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import NamedTuple

__all__ = ["NEW_LIFE_AFTER_S", "ChainBreak", "Link", "Walk", "shown_id", "walk_links"]


class Link(NamedTuple):
    """A linked row as the walk needs it: its id (for messages), its two links and when it
    was decided (POSIX seconds; 0: not known, then no missing link is taken for where a
    history read from its middle begins while a later life follows)."""

    decision_id: str
    prev: str
    hash: str
    at: float = 0.0


#: the least time between a run id's chain read from its middle and a later life's start:
#: a worker forgets a run's tombstone after BATON_RUN_RETENTION_S + BATON_TOMBSTONE_RETENTION_S
#: (1 h + 30 days by default); a clock step back is seconds to minutes (a row deleted then
#: looks alike, and is refused)
NEW_LIFE_AFTER_S = 86_400.0


class ChainBreak(NamedTuple):
    """Why a run's links give no order: ``kind`` (module doc) and what was found."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


class Walk(NamedTuple):
    """The links' verdict: ``order`` (positions in the read, chain by chain) when they hold."""

    #: the read positions of the links in their chains' order (empty when broken)
    order: list[int]
    broken: ChainBreak | None
    #: no row starts a chain: the history starts before what was read
    starts_before: bool


def walk_links(links: Sequence[Link], *, may_start_before: bool) -> Walk:
    """The chains of ``links`` (one run's linked rows, in the audit's read order)."""
    hashes = {link.hash for link in links}
    children: dict[str, list[int]] = {}
    starts: list[int] = []
    missing: list[int] = []
    for i, link in enumerate(links):
        if link.prev == "":
            starts.append(i)
        else:
            children.setdefault(link.prev, []).append(i)
            if link.prev not in hashes:
                missing.append(i)
    broken = _fork(links, children) or _gap(links, starts, missing, may_start_before)
    if broken is not None:
        return Walk([], broken, not starts)
    seen: set[int] = set()
    chains = [_chain(links, children, head, seen) for head in missing[:1] + starts]
    reached = len(seen)
    if reached != len(links):
        return Walk([], _loop(len(links), reached), not starts)
    broken = _interleaved(links, chains)
    if broken is not None:
        return Walk([], broken, not starts)
    return Walk([i for chain in chains for i in chain], None, not starts)


def _fork(links: Sequence[Link], children: dict[str, list[int]]) -> ChainBreak | None:
    for prev, after in children.items():
        if len(after) > 1:
            ids = " and ".join(_id(links, i) for i in after[:2])
            if len(after) > 2:
                ids += f" (and {len(after) - 2} more)"
            return ChainBreak(
                "forked",
                f"decisions {ids} both follow the link {_link(prev)} (a row inserted or altered)",
            )
    return None


def _gap(
    links: Sequence[Link], starts: list[int], missing: list[int], may_start_before: bool
) -> ChainBreak | None:
    """A missing link, unless it is where a history read from its middle begins: the one
    missing link, read before any chain start (``may_start_before``).

    Retention expires a run oldest row first, so while it eats a run id's earlier life the
    oldest surviving row names a link no row holds, and a later life starts a chain: that
    chain must then end before the next begins (``_interleaved``). Read after a start, a
    missing link is a gap (a row deleted; a clock step back may look alike: fail closed).
    """
    begins = may_start_before and (not starts or _life_before(links, missing, starts[0]))
    if not missing or (begins and len(missing) == 1):
        return None
    at = missing[1] if begins else missing[0]
    link = links[at]
    return ChainBreak(
        "missing",
        f"decision {_id(links, at)} follows a link ({_link(link.prev)}) that no row of the "
        "run holds (a row deleted or altered)",
    )


def _life_before(links: Sequence[Link], missing: list[int], start: int) -> bool:
    """The first missing link is read before the first chain start, and every row read
    before that start was decided NEW_LIFE_AFTER_S or more before it: an earlier life."""
    if not missing or missing[0] > start:
        return False
    return links[start].at - max(link.at for link in links[:start]) >= NEW_LIFE_AFTER_S


def _chain(
    links: Sequence[Link], children: dict[str, list[int]], head: int, seen: set[int]
) -> list[int]:
    """The read positions of the chain from ``head``, each row once in all chains (``seen``:
    the rows walked already; a row reached again, by a hash two rows share, ends the chain:
    such a copy fails its own hash, which is not judged here)."""
    chain = [head]
    seen.add(head)
    nxt = children.get(links[head].hash)
    while nxt is not None and nxt[0] not in seen:
        chain.append(nxt[0])
        seen.add(nxt[0])
        nxt = children.get(links[nxt[0]].hash)
    return chain


def _loop(linked: int, reached: int) -> ChainBreak:
    return ChainBreak(
        "unlinked",
        f"{linked} rows are linked, {reached} are reached from the run's start (rows that link "
        "to each other in a loop: altered)",
    )


def _interleaved(links: Sequence[Link], chains: list[list[int]]) -> ChainBreak | None:
    """The first chain that starts or goes on amid another in the read order."""
    spans = sorted((min(chain), max(chain), chain[0]) for chain in chains)
    for (_, end, head), (begin, _, other) in pairwise(spans):
        if begin < end:
            return ChainBreak(
                "interleaved",
                f"decision {_id(links, other)} starts a new chain amid the one begun by "
                f"{_id(links, head)} (a row inserted or altered)",
            )
    return None


def _id(links: Sequence[Link], i: int) -> str:
    return shown_id(links[i].decision_id)


def _link(chain_hash: str) -> str:
    """A row's link as a message quotes it: its first 16 characters, escaped (a forged row's
    may be any text)."""
    return shown_id(chain_hash[:16]) + "..."


def shown_id(decision_id: str) -> str:
    """An id from the audit (a decision's, a run's) as a message shows it: a forged one may
    be any text, so cut and escaped (a worker's decision id is 32 hex digits)."""
    shown = decision_id[:64].encode("unicode_escape").decode("ascii")
    return shown if len(decision_id) <= 64 else shown + "..."
