"""One run's recorded steps decided again under one policy, by the engine call the worker made.

A *step* is one engine call: the recorded decisions of one input record share its position
and time (``decided_at``, worker, partition, offset, input). :class:`Replayer` decides a
run's steps in order from its start with the step's recorded time as ``now``: ``decide``,
``refuse`` for a refusal of the worker's own (``worker_run_limit``, ``run_state_limit``:
not policy, replayed as recorded), ``expire_approvals`` for a timer step (no input).

The worker's sweep evicts a run idle for its run retention (no approval pending) to a
tombstone and records nothing: the proof replayer decides a step after the run was due on
its tombstone, and on the live run when only that reproduces the recorded decisions (a
worker down or behind); the new policy's replayer evicts where the proof did.

The proof replayer (``proof=True``, the recorded policy) links what it decides into the
run's hash chain as the worker's batch step does: the chain covers each decision with its
input, the state keeps the decision without it. So a matching ``chain_hash`` proves every
field equal, and a rebuilt state is the worker's, byte for byte. The what-if replayer only
marks what it decided (its decisions are compared on outcome and reason, never hashed).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, NamedTuple

from baton.processors.chain import link
from baton.processors.engine import (
    NO_KILLS,
    KillSwitches,
    Origin,
    decide,
    expire_approvals,
    next_due,
    refuse,
)
from baton.processors.recorded import Recorded
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Reason
from baton.schemas.events import RunEvent
from baton.schemas.policy import Policy

__all__ = [
    "TRIMMED",
    "Replayer",
    "StepContext",
    "faithful",
    "is_partial",
    "new_chain",
    "step_context",
    "steps",
]

#: refusals of the worker's own, not of its policy: replayed as refusals under both policies
_WORKER_REFUSALS: Final = frozenset({Reason.WORKER_RUN_LIMIT.value, Reason.RUN_STATE_LIMIT.value})
# plain strings: an enum member's lookup costs ten times a global's, and these run per step
_KILLED: Final = Reason.KILLED.value
_RUN_STATE_LIMIT: Final = Reason.RUN_STATE_LIMIT.value
#: a run `baton up` restored stopped (its history did not replay as recorded): not policy,
#: replayed as recorded from the step that first says so
_AUDIT_UNVERIFIED: Final = Reason.AUDIT_UNVERIFIED.value
#: what the worker's sweep decides (no input: replayed as a timer step)
_TIMER_REASONS: Final = frozenset({Reason.APPROVAL_EXPIRED.value, Reason.RESERVATION_EXPIRED.value})
#: the reasons step_context looks for (a step with none of them is decided plainly)
_RUN_EXPIRED: Final = Reason.RUN_EXPIRED.value
_NOT_POLICY: Final = _WORKER_REFUSALS | {_KILLED, _AUDIT_UNVERIFIED, _RUN_EXPIRED}
#: the workers' default run retention (schemas.settings ``run_retention_s``; a test keeps
#: them equal): `baton replay` and `baton up`'s restore pass the workers' own setting
RUN_RETENTION_S = 3600.0
#: the workers' default tombstone retention (``tombstone_retention_s``; the same test):
#: a run id is new to a worker only this long after its tombstone was made
TOMBSTONE_RETENTION_S = 30 * 86400.0
#: the what-if replayer's mark on a decision it made (in place of a chain link): a reply
#: answered again from the state is marked already, so it is not taken for a new decision
_DECIDED_HERE: Final = "replayed"


# (Final: a compiled module reads them from C statics, not through the module's dict)
_new_origin: Final = tuple.__new__
_new_context: Final = tuple.__new__
_Origin: Final = Origin
_NO_KILLS: Final = NO_KILLS
#: the fields the hot paths (faithful, step_context, replay.replay_run) read by place: a
#: compiled read of a Recorded field by name is a generic attribute lookup through the
#: tuple type's descriptor, by place a read of the tuple's array (with step_context's origin
#: made without a slice object: -0.3k instructions a recorded decision, callgrind)
_BY_PLACE: Final = {
    1: "decision_id", 2: "outcome", 3: "reason", 5: "policy_version", 7: "worker",
    8: "partition", 9: "offset", 10: "input", 11: "chain_prev", 12: "chain_hash",
}  # fmt: skip
assert all(Recorded._fields[at] == name for at, name in _BY_PLACE.items())
#: a recorded row's Origin fields (worker, partition, offset) are its 7th to 9th
assert tuple(Recorded._fields[7:10]) == Origin._fields


def steps(run: list[Recorded]) -> list[list[Recorded]]:
    """The run's decisions cut into engine calls (same input record, same time)."""
    out: list[list[Recorded]] = []
    last: tuple[Any, ...] = ()
    for rec in run:
        row: tuple[Any, ...] = rec  # not Recorded: its fields read by place (see _BY_PLACE)
        # a new step unless decided_at, worker, partition, offset and input are the last
        # row's: the offset first (it nearly always differs), no slice made (rec[6:11] != a
        # slice of the last row, which each row paid for)
        if (
            not last
            or row[9] != last[9]
            or row[6] != last[6]
            or row[7] != last[7]
            or row[8] != last[8]
            or row[10] != last[10]
        ):
            out.append([rec])
        else:
            out[-1].append(rec)
        last = row
    return out


class StepContext(NamedTuple):
    """What a step was decided with besides its policy, as recorded (made once for both
    replays of the step)."""

    #: the kill switch the run was under (a stop ``killed`` says so)
    kills: KillSwitches
    #: a refusal of the worker's own (worker_run_limit, run_state_limit)
    refusal: Recorded | None
    #: where its input was read
    origin: Origin
    #: `baton up` restored the run stopped here (audit_unverified)
    unverified: bool
    #: the worker's sweep had evicted the run to its tombstone (a stop run_expired): the
    #: worker's run retention, not policy, and recorded by nothing else
    evicted: bool = False
    #: the step starts a new chain after the run had one: the worker had forgotten the run's
    #: tombstone (its retention) and decided the run id as a new run's (see new_chain)
    anew: bool = False


_StepContext: Final = StepContext


def step_context(recs: list[Recorded]) -> StepContext:
    """The :class:`StepContext` of the step ``recs``."""
    first = recs[0]
    # worker, partition, offset by place (_BY_PLACE: a slice object's read is a generic one)
    origin = _new_origin(_Origin, (first[7], first[8], first[9]))
    if len(recs) == 1 and first[3] not in _NOT_POLICY:  # most steps: one plain decision
        return _new_context(_StepContext, (_NO_KILLS, None, origin, False, False, False))
    kills, refusal, unverified, evicted = _NO_KILLS, None, False, False
    for r in recs:
        reason = r.reason
        if reason == _KILLED:
            kills = KillSwitches(runs=frozenset({r.run_id}))
        elif reason in _WORKER_REFUSALS:
            refusal = r
        elif reason == _AUDIT_UNVERIFIED:
            unverified = True
        elif reason == _RUN_EXPIRED:
            evicted = True
    return StepContext(kills, refusal, origin, unverified, evicted)


#: why a run whose first chained decision names a predecessor is partial (the only reason a
#: chained run read from its chain's start may be partial without its rows being altered)
TRIMMED = "its history does not start in what was read (trimmed by retention or --since)"


def is_partial(run: list[Recorded], policies: dict[str, Policy]) -> str | None:
    """Why ``run`` cannot be replayed from its start (None: it can)."""
    chained = next((r for r in run if r.chain_hash is not None), None)
    if chained is not None and chained.chain_prev != "":
        return TRIMMED
    for rec in run:
        if rec.input is None and rec.reason not in _TIMER_REASONS:
            return f"decision {rec.decision_id} records no input (audited before inputs were)"
        if rec.policy_version not in policies:
            return f"policy {rec.policy_version} is not in the audit (no policy_in_force record)"
    return None


def faithful(rec: Recorded, d: Decision | None) -> bool:
    """``d`` (decided again under the recorded policy) is ``rec``: every field, through the
    chain hash, for a chained record; id, outcome and reason for one without a link.

    A chained row's outcome and reason are compared too: the hash proves ``d`` is what the
    worker published, but the report reads the row's own columns (``was`` of a change), and a
    row altered there and not re-linked would otherwise pass as faithful and move the gate
    (a stop written over an allow the new policy also stops: "unchanged", exit 0)."""
    # (the row's fields by place, see _BY_PLACE)
    if d is None or d.decision_id != rec[1]:
        return False
    if rec[12] is not None and d.chain_hash != rec[12]:
        return False
    return d.outcome == rec[2] and d.reason == rec[3]


def new_chain(recs: list[Recorded], chained: bool) -> bool:
    """The step ``recs`` starts a new chain although the run's earlier steps (``chained``:
    one of them was linked) had one: the worker decided it on a new run's state."""
    return chained and recs[0].chain_prev == ""


class Replayer:
    """Decides one run's steps in order, like the worker (under the policy each step names)."""

    __slots__ = (
        "chain_key", "evicted", "forgotten", "proof", "retention_s", "state", "tombstone_s",
    )  # fmt: skip

    def __init__(
        self,
        chain_key: bytes,
        proof: bool = True,
        retention_s: float = RUN_RETENTION_S,
        tombstone_s: float = TOMBSTONE_RETENTION_S,
    ) -> None:
        self.chain_key = chain_key
        #: True: link the chain with the inputs as the worker did (the recorded policy's
        #: replay, compared field by field); False: the new policy's, compared on outcomes
        self.proof = proof
        #: the workers' run retention (BATON_RUN_RETENTION_S): when their sweep evicts
        self.retention_s = retention_s
        #: and their tombstone retention (BATON_TOMBSTONE_RETENTION_S): when they forget it
        self.tombstone_s = tombstone_s
        self.state: RunState | None = None
        #: the last step was decided on the tombstone this replayer made of the run before
        #: it (the proof's finding; the new policy's replay is told through the context)
        self.evicted = False
        #: the last step was decided on no state: the worker had forgotten the run's
        #: tombstone and refused the run id as a new run's, linking nothing (the proof's
        #: finding, told to the new policy's replay as ``StepContext.anew``)
        self.forgotten = False

    def step(
        self,
        recs: list[Recorded],
        event: RunEvent | None,
        context: StepContext,
        policy: Policy,
    ) -> list[Decision]:
        """The step's decisions made now (not the replies re-emitted from the state)."""
        before = None if context.anew else self.state
        self.evicted = self.forgotten = False
        if before is None or event is None:
            return self._decide(recs, event, context, policy, before)
        if before.evicted_at is not None:
            fresh = self._decide(recs, event, context, policy, before)
            return self._or_forgotten(recs, event, context, policy, before, fresh)
        if not self.proof:
            # (the proof decides a refusal of the worker's own as any step: a run_state_limit
            # stop on what the sweep left, whose tombstone keeps the stop and refuses its
            # events; a worker_run_limit stop only where the worker held no state, see _decide)
            if context.evicted:  # the proof found the run evicted here: under any policy
                self.evicted = True
                before = _tombstone(before, recs[0].decided_at.timestamp(), self.retention_s)
            return self._decide(recs, event, context, policy, before)
        if context.evicted:  # a stop run_expired: only a tombstone gives it
            return self._swept(recs, event, context, policy, before, None, None)
        fresh = self._decide(recs, event, context, policy, before)
        if before.pending:  # an approval pending keeps a run from the sweep
            return fresh
        # most steps: not due, reproduced (one decision: a call of _reproduces costs more)
        new = self.state
        if new is not None and new.last_event_at > before.last_event_at:
            now_ts = new.last_event_at  # the engine's now (timestamp() costs more)
        else:
            now_ts = recs[0].decided_at.timestamp()
        if now_ts - before.last_event_at < self.retention_s and (
            faithful(recs[0], fresh[0])
            if len(recs) == 1 == len(fresh)
            else _reproduces(recs, fresh)
        ):
            return fresh
        return self._swept(recs, event, context, policy, before, fresh, now_ts)

    def _swept(
        self,
        recs: list[Recorded],
        event: RunEvent,
        context: StepContext,
        policy: Policy,
        live: RunState,
        live_fresh: list[Decision] | None,
        now_ts: float | None,
    ) -> list[Decision]:
        """The step decided on what the worker's sweep left of ``live`` (no approval
        pending, so the sweep may have evicted it): its tombstone when the run was due
        (idle for the retention) or a stop run_expired says so, else the live run; the
        other one when only the other reproduces the recorded decisions. Their chain
        hashes cover every field, so a match is the worker's own state: a worker that was
        down or behind past the due time decided on the live run, one with a shorter
        retention evicted earlier. When both match, or neither, the first stands: a later
        step the worker decided on the other state then shows as not reproduced.
        ``live_fresh``: the step decided on ``live`` already (``self.state`` its result),
        at ``now_ts``; None: not yet (a stop run_expired)."""
        if live_fresh is None or now_ts is None:
            now_ts = recs[0].decided_at.timestamp()
            due = True
            live_state = None
        else:
            due = now_ts - live.last_event_at >= self.retention_s
            live_state = self.state
        tomb_fresh = self._decide(
            recs, event, context, policy, _tombstone(live, now_ts, self.retention_s)
        )
        if _reproduces(recs, tomb_fresh):
            self.evicted = True
            return tomb_fresh
        tomb_state = self.state
        if live_fresh is None:
            live_fresh = self._decide(recs, event, context, policy, live)
            live_state = self.state
        if not due or _reproduces(recs, live_fresh):
            self.state = live_state
            return live_fresh
        self.state, self.evicted = tomb_state, True
        return self._or_forgotten(recs, event, context, policy, live, tomb_fresh)

    def _or_forgotten(
        self,
        recs: list[Recorded],
        event: RunEvent,
        context: StepContext,
        policy: Policy,
        before: RunState,
        fresh: list[Decision],
    ) -> list[Decision]:
        """``fresh`` (the step decided on what the run left, ``self.state`` its result), or
        the step decided on no state when only that reproduces an unlinked recorded step:
        the worker had forgotten the run's tombstone (BATON_TOMBSTONE_RETENTION_S) and
        refused the run id as a new run's (``unknown_tenant``: a refusal links nothing, so
        no new chain says so). Linked steps are left to ``new_chain``; the proof only."""
        if not self.proof or any(r.chain_hash is not None for r in recs):
            return fresh
        if _reproduces(recs, fresh):
            return fresh
        # forgotten no sooner than the worker's sweep forgets the earliest tombstone it can
        # have made (a forged unlinked refusal of a run it still held passed as forgotten)
        now_ts = recs[0].decided_at.timestamp()
        tomb = before
        if tomb.evicted_at is None:
            tomb = _tombstone(before, now_ts, self.retention_s)
        if now_ts < next_due(tomb, self.retention_s, self.tombstone_s):
            return fresh
        kept, evicted = self.state, self.evicted
        again = self._decide(recs, event, context, policy, None)
        if _reproduces(recs, again):
            self.forgotten, self.evicted = True, False
            return again
        self.state, self.evicted = kept, evicted
        return fresh

    def _decide(
        self,
        recs: list[Recorded],
        event: RunEvent | None,
        context: StepContext,
        policy: Policy,
        before: RunState | None,
    ) -> list[Decision]:
        """The step's decisions made on ``before`` (which becomes ``self.state``'s past)."""
        first = recs[0]
        now = first.decided_at
        kills, refusal, origin, unverified, _, _ = context
        self.state = before
        new: RunState | None
        if unverified and before is not None and before.stopped is None:
            self.state = before = before.copy()
            before.stopped = _AUDIT_UNVERIFIED
        if event is None:
            if before is None:
                return []
            new, decided = expire_approvals(before, policy, now, kills)
        elif refusal is not None:
            stored = before if refusal.reason == _RUN_STATE_LIMIT else None
            if self.proof and before is not None and (stored is None or refusal.chain_hash is None):
                # a worker refuses worker_run_limit only a run it does not hold (its
                # forgetting of a tombstone is _or_forgotten's), and links every refusal of a
                # run it holds (so since the chain began, before inputs were recorded): else
                # not the worker's. Refused as recorded (the budget and the worker's load are
                # not in the audit), such a row was reproduced: a forged stop, no key needed
                return []
            reason, detail = Reason(refusal.reason), refusal.detail or ""
            new, decided = refuse(stored, event, policy, now, reason, detail, kills, origin)
            if stored is None and decided and decided[0].decision_id != first.decision_id:
                # refused before lives were marked (engine_refusals.refuse): unmarked
                new, decided = refuse(None, event, policy, now, reason, detail, kills, origin, "")
            new = new if new is not None else before
        else:
            new, decided = decide(before, event, policy, now, kills, origin)
            if before is None and decided and decided[0].decision_id != first.decision_id:
                new, decided = _without_life(recs, event, policy, now, context, new, decided)
        self.state = new
        if len(decided) == 1:  # most steps: one decision (a list comprehension costs a frame)
            fresh = decided if decided[0].chain_hash is None else []
        else:
            fresh = [d for d in decided if d.chain_hash is None]
        if not fresh or new is before or new is None:  # nothing kept: nothing to link
            return fresh
        if not self.proof:
            for d in fresh:
                d.chain_hash = _DECIDED_HERE
        elif event is None:  # a timer step: the sweep links what it decides as it is
            link(new, fresh, self.chain_key)
        else:
            # as the worker's batch step: the published copy (with the input) is what the
            # chain covers, the state keeps the decision without it (recorded.publishable,
            # keep_links): the input is set for the link only
            link(new, fresh, self.chain_key, first.input)
        return fresh


def _without_life(
    recs: list[Recorded],
    event: RunEvent,
    policy: Policy,
    now: datetime,
    context: StepContext,
    new: RunState | None,
    decided: list[Decision],
) -> tuple[RunState | None, list[Decision]]:
    """A new run's first step whose recorded id is not its life's: decided as a worker from
    before lives were marked decided it (decision_builder.life_of), when that gives the
    recorded id; else as decided (then not reproduced, never guessed)."""
    old_new, old = decide(None, event, policy, now, context.kills, context.origin, life="")
    if old and old[0].decision_id == recs[0].decision_id:
        return old_new, old
    return new, decided


def _reproduces(recs: list[Recorded], decided: list[Decision]) -> bool:
    """``decided`` is the step ``recs`` as recorded (see :func:`faithful`)."""
    if len(decided) != len(recs):
        return False
    if len(recs) == 1:  # most steps (map and all cost more than the comparison)
        return faithful(recs[0], decided[0])
    return all(map(faithful, recs, decided))


def _tombstone(live: RunState, now_ts: float, retention_s: float) -> RunState:
    """``live`` as the sweep evicted it before ``now_ts``: at its due time (the sweep runs
    every second; the worker's exact time is not recorded), or now if that is earlier."""
    return live.tombstone(min(live.last_event_at + retention_s, now_ts))
