"""The run state's constants and value types: the dedup window's bounds, the state format,
and the records a ``RunState`` holds (a task of the tree, a reservation, a pending
approval). Every name is re-exported by processors/state.py, where they are imported from.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Final, NamedTuple

from baton.schemas.events import HandoffRequested

__all__ = [
    "FRESH_LIMIT",
    "MAX_PENDING_APPROVALS",
    "RECENT_REPLIES",
    "SEEN_LIMIT",
    "STATE_FORMAT",
    "TASK_FOLD",
    "PendingApproval",
    "Reservation",
    "TaskNode",
    "intern",
]

#: request keys remembered for dedup; a redelivery older than this many later events of
#: the same run is decided again (documented in docs/guarantees.md)
SEEN_LIMIT: Final = 512
#: dedup marks go to a small dict copied with the state, folded into the shared older marks
#: every FRESH_LIMIT keys: a long run copies ~FRESH_LIMIT marks per event, not SEEN_LIMIT
FRESH_LIMIT: Final = 32
#: new tasks go to a small dict, merged into the shared task dict every TASK_FOLD tasks: a
#: run with many tasks copies at most this many per allowed handoff (amortised), not all
TASK_FOLD: Final = 32
#: decisions kept verbatim for re-emission to a retrying client (the newest keys only: the
#: worker publishes decisions *before* it writes state, so a crash never needs older ones)
RECENT_REPLIES: Final = 6
MAX_PENDING_APPROVALS: Final = 256
#: format 4: a map with short keys (state_wire.STATE_KEYS), stored replies keyed by column names
#: (state_wire.REPLY_COLUMNS, or the state's own ``cols``); formats 1-3 were positional lists:
#: format 3 added the run's steps (element 20), its agent pairs' bounces (21), and each
#: reservation's expiry and task (columns 4 and 5 of element 12); format 2 the request
#: digests (17), the eviction time of a tombstone (18) and the head of the run's decision
#: hash chain (19). Formats 1-3 are still read (without what they lack: no steps counted, no
#: bounces, reservations that never expire)
STATE_FORMAT: Final = 4


#: interned names (tenant, agents, tasks) are shared by every run that uses them; CPython
#: frees an interned string once nothing else holds it, so hostile names do not pile up
intern: Final = sys.intern


class TaskNode(NamedTuple):
    """A task of the run's tree: who owns it, who handed it over, its parent and depth.

    A NamedTuple rather than a frozen dataclass: every allowed handoff makes one, and a
    frozen dataclass is about three times slower to build (bench/RESULTS.md).
    """

    #: "" once the owner released it (a completion with a status in release_ownership_on):
    #: the next agent it is handed to owns it (agent names are never empty)
    owner: str
    giver: str
    parent: str | None
    depth: int


class Reservation(NamedTuple):
    """An estimate an allowed handoff holds against the run's shared budget until its
    completion, or until ``expires_at`` (a POSIX time; None: no reservation_ttl_seconds)."""

    usd: float
    tool_calls: int
    expires_at: float | None
    task_id: str | None


@dataclass(slots=True, frozen=True)
class PendingApproval:
    approval_id: str
    request: HandoffRequested
    expires_at: float
    #: when the approval was asked for: a signed grant made before it is a replay
    created_at: float = 0.0
