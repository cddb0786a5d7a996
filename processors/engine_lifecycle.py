"""A run's life in the ``runs`` table between its events: what falls due (approval and
reservation expiry), when the sweep next has work, and eviction to a tombstone.

Pure like the engine: the worker's 1 s sweep (processors/sweep_step.py) and replay call
these at the time they stand for.
"""

from __future__ import annotations

from datetime import datetime

from baton.processors.approvals import expire_pending
from baton.processors.decision_builder import NO_ORIGIN, DecisionContext
from baton.processors.engine_budget import expire_reservations
from baton.processors.engine_control import NO_KILLS, KillSwitches
from baton.processors.policy_rules import rules_for
from baton.processors.state import RunState
from baton.schemas.decision import Decision
from baton.schemas.policy import Policy

__all__ = ["evict", "expire", "expire_due", "is_evictable", "new_state", "next_due"]


def new_state(run_id: str, tenant: str, now: datetime, life: str = "") -> RunState:
    """The state of a run Baton has not seen before, started at ``now``; ``life``: where this
    life of the run id began (decision_builder.life_of)."""
    return RunState.new(run_id, tenant, now.timestamp(), life)


def is_evictable(state: RunState, now: datetime, retention_s: float) -> bool:
    """A run idle for ``retention_s`` (finished or not) may leave the table.

    A finished run is kept for the retention too, so a late redelivery of its events is still
    answered from its state rather than decided as a new run. Pending approvals keep a run
    until they are resolved or swept as expired, whatever its age.
    """
    if state.pending:
        return False
    return now.timestamp() - state.last_event_at >= retention_s


def evict(
    state: RunState, now: datetime, retention_s: float, tombstone_retention_s: float
) -> RunState | None:
    """What the table keeps of a run at ``now``: the run itself, its tombstone, or nothing.

    A run idle for ``retention_s`` (and no approval pending) becomes a tombstone: its
    tenant, counters, spend and stop survive, so a late handoff is still stopped (with the
    original reason, ``run_finished``, or ``run_expired`` for a run that was only idle) and a
    late cost still counts; so do its reports' dedup marks, so a late copy of a report it
    counted is answered ``reply_not_kept`` and not counted again. A tombstone is forgotten
    ``tombstone_retention_s`` after it was made. Returns ``state`` itself when nothing changes.
    """
    now_ts = now.timestamp()
    if state.evicted_at is not None:
        # counted from its last event, not from the eviction: a run that keeps knocking
        # keeps its tombstone
        since = max(state.evicted_at, state.last_event_at)
        return None if now_ts - since >= tombstone_retention_s else state
    if is_evictable(state, now, retention_s):
        return state.tombstone(now_ts)
    return state


def next_due(state: RunState, retention_s: float, tombstone_retention_s: float) -> float:
    """When the sweep next has work on ``state`` (a POSIX time): an approval to expire, the
    run to turn into a tombstone, or the tombstone to forget."""
    if state.evicted_at is not None:
        return max(state.evicted_at, state.last_event_at) + tombstone_retention_s
    if state.pending:  # it cannot leave while an approval waits: the first expiry is next
        due = min([p.expires_at for p in state.pending.values()])
    else:
        due = state.last_event_at + retention_s
    reserved_due = state.reserved_due
    if reserved_due is not None and reserved_due < due:
        due = reserved_due
    return due


def expire_due(
    state: RunState, policy: Policy, now: datetime, kills: KillSwitches = NO_KILLS
) -> tuple[RunState, list[Decision]]:
    """The worker's timer: stop every pending approval of the run whose TTL has passed and
    release every reservation whose TTL has passed. A pure function of (state, now): replay
    repeats it at the recorded time. ``state`` itself when nothing is due."""
    now_ts = now.timestamp()
    due = state.reserved_due
    if not (due is not None and due <= now_ts) and not any(
        p.expires_at <= now_ts for p in state.pending.values()
    ):
        return state, []
    st = state.copy()
    ctx = DecisionContext(rules_for(policy, st.tenant), now, now_ts, kills, NO_ORIGIN)
    return st, expire(st, ctx)


def expire(st: RunState, ctx: DecisionContext) -> list[Decision]:
    """Everything due in ``st`` (changed in place): expired approvals, then expired
    reservations."""
    out = expire_pending(st, ctx) if st.pending else []
    reserved_due = st.reserved_due
    if reserved_due is not None and reserved_due <= ctx.now_ts:
        out += expire_reservations(st, ctx)
    return out
