"""One sweep over the runs that are due: approvals and reservations expired, idle runs evicted.

Faust-agnostic (the worker's 1 s timer calls it with the runs its due index pops, and
publishes the outputs): a run whose partition is not caught up is put back for the next
sweep, since a backlog may hold the grant or handoff that changes it; a run whose state
cannot be read is logged and left as it is (one run never stops the sweep; one the restore
refused, processors/state_gate.py, is left unlogged: the restore said so, once). Then the runs
idle for ``DueIndex.hold_idle_s`` are held as their changelog record, when the store can
read records back (the worker's ``RunStore``; a plain dict cannot, and keeps them decoded).
"""

from __future__ import annotations

import logging
from collections.abc import Set
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from baton.processors.batch import HARD_STATE_MAX_BYTES, BatchProcessor, Outputs
from baton.processors.chain import link
from baton.processors.engine import KillSwitches, evict, expire_due
from baton.processors.state import RunState
from baton.processors.state_gate import RefusedRun
from baton.processors.sweep import DueIndex, latest_trusted
from baton.schemas.decision import Decision
from baton.streams.partitioner import partition_for

__all__ = ["HoldsRecords", "drop_unkeyed", "sweep_due"]

log = logging.getLogger("baton.processors.app")


@runtime_checkable
class HoldsRecords(Protocol):
    """A run store that can keep a run as its changelog record and decode it on its next read."""

    def hold_encoded(self, key: bytes) -> None: ...

    def take_revived(self) -> list[bytes]: ...

    def idle_since(self, key: bytes) -> float | None: ...

    def get(self, key: bytes, default: Any = None) -> Any: ...


def sweep_due(
    proc: BatchProcessor,
    due: DueIndex,
    now: datetime,
    *,
    active: Set[int],
    ready: Set[int],
    kills: KillSwitches,
    run_retention_s: float,
    tombstone_retention_s: float,
    limit: int,
) -> Outputs:
    """Expire and evict the due runs of the ``active`` partitions (only the ``ready`` ones
    now; the others again in 1 s), changing ``proc.states``; return what to publish."""
    out = Outputs()
    now_ts = now.timestamp()
    states = proc.states
    later: list[bytes] = []
    for key in due.pop_due(now_ts, limit):
        partition = partition_for(key, proc.partitions)
        if partition not in active:
            continue  # revoked: its new owner indexes it
        if partition not in ready:
            later.append(key)  # a backlog may change it: look again next sweep
            continue
        try:
            state = states.get(key)
        except RefusedRun:
            continue  # the restore logged it (one line for all); left as it is, fail closed
        except Exception:
            log.error(
                "run %r: stored state cannot be read; left as is",
                key,
                exc_info=True,
                extra={"run_id": key.decode("utf-8", "replace")},  # JSON logs' run_id
            )
            continue
        if state is None:
            continue
        try:
            decisions, kept, raw = _swept(
                proc, state, now, kills, run_retention_s, tombstone_retention_s
            )
        except Exception:
            # a record whose values the engine cannot compute with (a writer of the
            # changelog): this run only, never the sweep (a raise here ended the worker)
            log.error(
                "run %r: stored state cannot be swept; left as is",
                key,
                exc_info=True,
                extra={"run_id": key.decode("utf-8", "replace")},
            )
            continue
        out.decisions.extend((partition, d) for d in decisions)
        if kept is None:
            del states[key]
            out.changed[key] = (partition, None)
            proc.account(key, None)
        elif raw is not None:
            states[key] = kept
            out.changed[key] = (partition, kept)
            out.encoded[key] = raw
            proc.account(key, len(raw))
        due.touch(key, kept)
    for key in later:
        due.push(key, now_ts + 1.0)
    if isinstance(states, HoldsRecords):
        _note_revived(states, due)
        # as many as the sweep may decode (``limit``): after a rebalance it reads every
        # restored run once, and holding fewer would leave them decoded faster than held
        for key in due.idle_keys(now_ts, limit, states.idle_since):
            states.hold_encoded(key)
    return out


def _swept(
    proc: BatchProcessor,
    state: RunState,
    now: datetime,
    kills: KillSwitches,
    run_retention_s: float,
    tombstone_retention_s: float,
) -> tuple[list[Decision], RunState | None, bytes | None]:
    """What the sweep makes of one due run, nothing changed yet: the decisions of what
    expired (linked), the state to keep (None: forget the run) and its record (None: the
    state did not change)."""
    new, decisions = _clock_bounded(state, now.timestamp()), []
    if new.pending or new.reserved_due is not None:
        new, decisions = expire_due(new, proc.policy, now, kills)
        if decisions:
            link(new, decisions, proc.chain_key)
    kept = evict(new, now, run_retention_s, tombstone_retention_s)
    raw = kept.to_bytes() if kept is not None and kept is not state else None
    if raw is not None and len(raw) > HARD_STATE_MAX_BYTES:
        # only a changelog writer's record is this large (a run stops at its budget, far
        # below): written back, one past Kafka's limit ended the worker on every restart
        raise ValueError(
            f"its state would be written at {len(raw)} bytes (> {HARD_STATE_MAX_BYTES})"
        )
    return decisions, kept, raw


def _clock_bounded(state: RunState, now_ts: float) -> RunState:
    """``state``, or a copy whose times past what the worker's clock allows are ``now_ts``
    (sweep.MAX_AHEAD_S): its start, last event and eviction (the run then ages and leaves
    like any), and an approval expiring later than any TTL allows (expired now: stopped
    ``approval_expired``, fail closed). Only a changelog writer's record (or a clock far off)
    holds such times; the record is written again with the worker's."""
    ahead, latest = latest_trusted(now_ts)
    ev = state.evicted_at
    if (
        state.started_at <= ahead
        and state.last_event_at <= ahead
        and (ev is None or ev <= ahead)
        and all(p.expires_at <= latest for p in state.pending.values())
    ):
        return state
    log.warning(
        "run %r: stored times past the worker's clock (start %r, last event %r, evicted %r); "
        "set to now",
        str(state.run_id)[:80],
        state.started_at,
        state.last_event_at,
        ev,
        extra={"run_id": str(state.run_id)[:200]},
    )
    new = state.copy()
    new.started_at = state.started_at if state.started_at <= ahead else now_ts
    new.last_event_at = state.last_event_at if state.last_event_at <= ahead else now_ts
    new.evicted_at = ev if ev is None or ev <= ahead else now_ts
    new.pending = {
        k: p if p.expires_at <= latest else replace(p, expires_at=now_ts)
        for k, p in state.pending.items()
    } or state.pending
    return new


def _note_revived(states: HoldsRecords, due: DueIndex) -> None:
    """Index the runs decoded since the last sweep (a changed one again, with the state it
    was touched with): otherwise a held run read without a change stays decoded for good."""
    for key in states.take_revived():
        state = states.get(key)
        if state is not None:
            due.touch(key, state)


def drop_unkeyed(states: Any) -> list[bytes]:
    """Take the records restored without a usable key out of ``states`` (a mapping whose keys
    are run ids as bytes) and return them, for the log: a changelog record with no key (or
    an empty one) is no run's state, only a writer of the changelog's, and its key ``None``
    ended the worker in the sweep ~10 s after every restart (session 30 H1 F6)."""
    bad = [key for key in states if not isinstance(key, bytes) or not key]
    for key in bad:
        del states[key]
    return bad
