"""The per-run hash chain of decisions: each chained decision names the one before it.

Every decision that changes a run's state is linked: ``chain_prev`` is the run's chain head
before it, ``chain_hash`` the keyed BLAKE2b of that and the decision's content
(``schemas.decision.chain_content``), and the new head is kept in the run's state, in the same
changelog write as the decision's other effects. A re-emitted decision (a redelivery, a
client retry) is the stored one, with its stored links: the same hash. `baton audit verify`
walks the links in ClickHouse and names a run whose rows were deleted, altered or inserted.

Not chained: decisions that change no state (a refused reused request id, a run the worker
would not take on) and control records (they belong to no run).

What the key adds (``BATON_AUDIT_CHAIN_KEY``): without it, anyone who knows this scheme and
can write the audit table can append a correctly linked forged row at the end of a run; with
it, only a holder of the key can. Deleting a run's newest rows is visible only to a verify
that knows the run's head (the worker's state), not from the audit alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from baton.processors.state import RunState
from baton.schemas.decision import (
    Decision,
    chain_hash,
    chain_values,
    content_hash,
    decision_content,
)

__all__ = ["link"]


def link(
    state: RunState, decisions: Iterable[Decision], key: bytes = b"", input: str | None = None
) -> None:
    """Chain ``decisions`` (in order) onto ``state``'s head and move the head past them.

    ``state`` must be the new state that remembers these decisions (not one shared with
    an older state): the head is written in place. ``input``: hash each decision as its
    published copy holding that input (``Decision.input``) while it keeps its own (replay:
    the copy the worker published, without copying).
    """
    head = state.chain_head
    compiled = _COMPILED
    for d in decisions:
        d.chain_prev = head
        if compiled:  # the content written from native fields (decision_content)
            content = decision_content(d, d.input if input is None else input)
            d.chain_hash = head = content_hash(key, head, content)
        elif input is None:
            d.chain_hash = head = chain_hash(key, head, chain_values(d))
        else:
            kept, d.input = d.input, input
            d.chain_hash = head = chain_hash(key, head, chain_values(d))
            d.input = kept
    state.chain_head = head


#: this module is compiled (BATON_COMPILE=1): a Decision is a native class, whose fields
#: ``decision_content`` reads natively (``chain_values``, an attrgetter, reads each through its
#: descriptor); interpreted, chain_values and chain_content are the faster
_COMPILED: Final = not __file__.endswith(".py")
