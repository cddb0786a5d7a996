"""One batch of run events through the engine: parse, route, decide, and collect what to publish.

Faust-agnostic on purpose: the Faust agent (``processors.app``), the benchmark and the tests
feed it ``InputRecord``s and a state mapping, and get back an ``Outputs`` to publish. Nothing
here touches Kafka, so the ordering rules below are checked in one place:

* decisions are published and acknowledged *before* the run states they come from are
  written to the changelog, so a crash between the two re-decides (same decision ids), and
  a record read again after both is below its run's read position: never answered twice;
* **one record never stops the batch**: whatever goes wrong with one record (no key, not
  JSON, a value out of range, a run that would outgrow its state budget, an engine bug, a
  stored state that cannot be read) makes that record one dead letter with a named
  ``error_kind`` (:class:`ErrorKind`), or a ``stop`` with a named reason, and the batch goes
  on. That is a property of the loop (one ``try`` around every step of a record), not a
  list of special cases; only infrastructure failures (produce, commit, membership), which
  happen outside this module, end a worker;
* **bounded state**: a run whose encoded state would pass ``run_state_max_bytes`` is
  stopped (``run_state_limit``) with its last state that fit, and a worker holding
  ``max_runs`` runs stops new runs (``worker_run_limit``) without taking them on;
* an event whose key does not murmur2-hash to the partition it arrived on is forwarded,
  unchanged, to its run's partition and decided there (another partitioner would split it).

Where a record goes (and the run positions read) is ``batch_routing``; the records in and
out and the dead-letter envelope are ``batch_records`` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from datetime import datetime
from typing import Any, Final

from baton.processors.batch_records import (
    DeadLetter,
    ErrorKind,
    InputRecord,
    Outputs,
    RecordError,
    answers_approval,
    dead_letter_record,
    same_record,
)
from baton.processors.batch_routing import FORWARDED_FROM, mark_read, not_kept, read_before, route
from baton.processors.chain import link
from baton.processors.engine import (
    NO_KILLS,
    KillSwitches,
    Origin,
    decide,
    expire_due,
    refuse,
)
from baton.processors.recorded_copies import publishable, published
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Reason
from baton.schemas.events import ApprovalDenied, ApprovalGranted, EventError, RunEvent
from baton.schemas.policy import Policy

__all__ = [
    "DEFAULT_MAX_RUNS",
    "DEFAULT_MAX_STATE_BYTES",
    "DEFAULT_RUN_STATE_MAX_BYTES",
    "FORWARDED_FROM",
    "HARD_STATE_MAX_BYTES",
    "BatchProcessor",
    "DeadLetter",
    "ErrorKind",
    "InputRecord",
    "Outputs",
    "dead_letter_record",
]

#: a run's encoded state may grow to this by default; well under Kafka's 1 MB message
#: limit, because a run stopped at the limit still remembers its later events (a bounded
#: window: SEEN_LIMIT keys and RECENT_REPLIES decisions, ~200 KB at most)
DEFAULT_RUN_STATE_MAX_BYTES = 256 * 1024
#: no state record is ever written past this: the producer's (and Kafka's default
#: broker) message limit is 1,000,000 bytes, and a changelog record that cannot be written
#: would end the worker on every restart
HARD_STATE_MAX_BYTES = 900_000
#: the largest budget a setting may give (a run stopped at it still grows by its window)
MAX_RUN_STATE_MAX_BYTES = 600_000
#: runs (and tombstones) one worker holds before it stops taking on new runs
DEFAULT_MAX_RUNS = 500_000
#: encoded run state one worker holds before it stops taking on new runs (memory ~1.6x)
DEFAULT_MAX_STATE_BYTES = 4 * 1024**3
#: one int a record size below this, held by every run of that size in the size map (an int
#: of its own took 32 bytes a run; at most 8,192 of them, ~0.7 MB; Any: compiled, not reboxed)
_SIZES: dict[int, Any] = {}
_SIZES_SHARED = 8192
_new_origin: Final = tuple.__new__


def _stopped_at_budget(state: RunState | None) -> bool:
    """``state``'s run was stopped at its state budget (and stays past it by its bounded
    window): its next events are refused without measuring each (``BatchProcessor._redo``)."""
    return state is not None and state.stopped == Reason.RUN_STATE_LIMIT


def _refused_within_hard(previous: RunState | None, raw: bytes) -> bool:
    """The run was stopped at its budget before the batch (its events were refused unmeasured
    already) and ``raw``, its state now, stays within the hard limit: nothing to re-decide."""
    return _stopped_at_budget(previous) and len(raw) <= HARD_STATE_MAX_BYTES


class BatchProcessor:
    """Decides batches of run events against a state mapping (the Faust table's store)."""

    def __init__(
        self,
        policy: Policy,
        partitions: int,
        states: MutableMapping[bytes, RunState],
        worker: str | None = None,
        kills: Callable[[], KillSwitches] | None = None,
        exactly_once: bool = False,
        *,
        run_state_max_bytes: int = DEFAULT_RUN_STATE_MAX_BYTES,
        max_runs: int = DEFAULT_MAX_RUNS,
        chain_key: bytes = b"",
        approvals_topic: str | None = None,
        max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
        log_end: Callable[[str, int], int] | None = None,
    ) -> None:
        if not 0 < run_state_max_bytes <= MAX_RUN_STATE_MAX_BYTES:
            raise ValueError(
                f"run_state_max_bytes must be in 1..{MAX_RUN_STATE_MAX_BYTES}, "
                f"got {run_state_max_bytes}"
            )
        self.policy = policy
        self.exactly_once = exactly_once
        self.partitions = partitions
        self.states = states
        self.worker = worker
        self.run_state_max_bytes = run_state_max_bytes
        self.max_runs = max_runs
        #: encoded bytes of the runs this worker holds, as last written (runs restored from
        #: the changelog count once the sweep has indexed them): past max_state_bytes, new
        #: runs are refused like past max_runs, so memory is bounded by bytes, not only count
        self.max_state_bytes = max_state_bytes
        self.state_bytes = 0
        self._sizes: dict[bytes, Any] = {}  # (Any: _SIZES's int objects, not boxed anew)
        #: the key of the runs' decision hash chains (processors/chain.py)
        self.chain_key = chain_key
        #: approvals only from here, run events never (None: no check, for tests): whoever
        #: may write requests must not approve, whoever may approve must not hand off
        self.approvals_topic = approvals_topic
        #: (topic, partition) -> its log end, -1 unknown: a read position past it is stale
        self.log_end = log_end
        self._kills = kills or (lambda: NO_KILLS)
        self.decided = 0
        self.dead_lettered = 0
        self.forwarded = 0
        #: records read again, answered with nothing (same_record, batch_routing.read_before)
        self.redelivered = 0
        #: runs stopped because their state reached the budget, new runs turned away
        self.state_limited = 0
        self.run_limited = 0

    def process(self, records: list[InputRecord], now: datetime) -> Outputs:
        """Decide ``records`` in order; never raises for anything one record holds."""
        out = Outputs()
        kills = self._kills()
        #: per run decided in this batch: its state before the batch, and its records
        before: dict[bytes, RunState | None] = {}
        decided: dict[bytes, list[tuple[InputRecord, RunEvent]]] = {}
        for rec in records:
            try:
                routed = route(rec, self.partitions, self.approvals_topic, out)
                if routed is None:
                    continue
                key, event = routed
                state = self._state(key)
                if key not in before:
                    before[key] = state
                if self._decide(rec, key, event, state, kills, now, out, careful=False):
                    decided.setdefault(key, []).append((rec, event))
            except Exception as exc:  # this record's dead letter, never the batch's end
                out.dead_letters.append(self._refused(rec, exc, now))
        self._check_sizes(out, before, decided, kills, now)
        for key, (_partition, state) in out.changed.items():
            self.account(key, len(out.encoded[key]) if state is not None else None)
        self.decided += len(out.decisions)
        self.dead_lettered += len(out.dead_letters)
        self.forwarded += len(out.forwards)
        return out

    def _refused(self, rec: InputRecord, exc: Exception, now: datetime) -> DeadLetter:
        """The dead letter of a record one of whose steps raised: a bad record names its
        kind; anything else is a bug of ours (``engine_error``), still this record's only."""
        if isinstance(exc, (EventError, RecordError)):
            return dead_letter_record(rec, exc.kind, str(exc), self.worker, now)
        error = f"{type(exc).__name__}: {str(exc)[:2000]}"
        return dead_letter_record(rec, ErrorKind.ENGINE_ERROR, error, self.worker, now)

    # ------------------------------------------------------------------ one record's steps
    def _state(self, key: bytes) -> RunState | None:
        try:
            return self.states.get(key)
        except Exception as exc:
            # a changelog record that does not decode (written by a newer Baton, or by
            # someone with write access to the changelog): deciding this run as new would
            # forget its stop and spend, so its events are dead letters until it is fixed
            raise RecordError(
                ErrorKind.STATE_UNREADABLE,
                f"the run's stored state cannot be read ({type(exc).__name__}: "
                f"{str(exc)[:500]}); its events are refused until the state is repaired",
            ) from exc

    def _decide(
        self,
        rec: InputRecord,
        key: bytes,
        event: RunEvent,
        state: RunState | None,
        kills: KillSwitches,
        now: datetime,
        out: Outputs,
        *,
        careful: bool,
        unmeasured: bool = True,
    ) -> bool:
        """Decide one event into ``out``; True when the engine decided it (state may change).

        ``careful``: measure the new state against the budget now (the slow path for a run
        that outgrew it in this batch); otherwise the batch measures each run once at its end.
        ``unmeasured``: a careful run already stopped at its budget is refused without it.
        """
        # no interpreted calls (~1-2k each): tuple.__new__ for Origin, answers_approval inline
        origin = _new_origin(Origin, (self.worker, rec.partition, rec.offset))
        read, approval = state, type(event) is ApprovalGranted or type(event) is ApprovalDenied
        if self.exactly_once and state is not None and state.pending and not approval:
            state = self._expire_first(rec, key, state, kills, now, out, careful)
        if state is None and (
            len(self.states) >= self.max_runs or self.state_bytes >= self.max_state_bytes
        ):
            self.run_limited += 1
            _, decisions = refuse(
                None,
                event,
                self.policy,
                now,
                Reason.WORKER_RUN_LIMIT,
                f"this worker holds {len(self.states)} runs of {self.state_bytes} bytes "
                f"(max_runs {self.max_runs}, max_state_bytes {self.max_state_bytes}); new "
                f"runs are stopped until tombstones are forgotten (BATON_TOMBSTONE_RETENTION_S)",
                kills,
                origin,
            )
            decisions = publishable(None, decisions, event)
            out.decisions.extend((rec.partition, d) for d in decisions)
            return False
        new, decided = decide(state, event, self.policy, now, kills, origin)
        if (
            (new is not state or not_kept(decided))
            and read is not None
            and read_before(read, rec, approval, self.log_end)
        ):  # read before (batch_routing): answered, and now anew (its key past the 512
            # remembered: counted twice) or refused as no longer kept (a stop after its allow)
            self.redelivered += 1
            return False
        if new is not None and new is not state:
            mark_read(new, rec.partition, rec.offset, approval, rec)
        # copies to publish: with the input (`baton replay`), a reply from the state flagged
        # reemitted (already linked); what was decided now linked when the state changed
        decisions = published(new, state, decided, event, self.chain_key)
        if unmeasured and new is not state and _stopped_at_budget(state):
            # stopped at its budget before this event (a retry was answered above, from its
            # memory): refused again unmeasured, the run encoded once with the batch's last.
            # On the fast path too: refused only when the batch ended over the budget, an
            # event's decision (and id) hung on where the batches split
            new, decisions = self._limit(state, event, None, kills, now, origin)
            out.encoded.pop(key, None)
        elif careful and new is not None and new is not state:
            raw = new.to_bytes()
            if len(raw) > self.run_state_max_bytes:
                limited, decisions = self._limit(state, event, len(raw), kills, now, origin)
                raw = limited.to_bytes() if limited is not None else b""
                if limited is None or len(raw) > HARD_STATE_MAX_BYTES:
                    raise RecordError(
                        ErrorKind.RUN_STATE_LIMIT,
                        f"run {event.run_id}: its state cannot take this event even stopped "
                        f"({len(raw)} bytes > {HARD_STATE_MAX_BYTES}); refused unrecorded",
                    )
                new = limited
            out.encoded[key] = raw
        if new is not None and new is not state:
            self.states[key] = new
            out.changed[key] = (rec.partition, new)
        elif self.exactly_once and decisions and same_record(decisions, rec, approval):
            # Kafka delivered this very record again, its decisions committed with the state
            # (its offset apparently not): re-emitted, they would be out twice; a client retry
            # is another record. (At-least-once re-emits a kept decision, the same id.)
            self.redelivered += 1
            return True
        out.decisions.extend((rec.partition, d) for d in decisions)
        return True

    def _expire_first(
        self,
        rec: InputRecord,
        key: bytes,
        state: RunState,
        kills: KillSwitches,
        now: datetime,
        out: Outputs,
        careful: bool,
    ) -> RunState:
        """Under exactly-once, the run's approvals past their TTL expired as the sweep expires
        them (a timer step: no position, no input) before a run event is decided on the run.
        Expired lazily by the event, an expiry carried the event's requests-topic position
        under the approval's key: a late grant at the same partition and offset of the
        approvals topic was answered with it and taken for a redelivery of the grant
        (``same_record``), so it got no decision. An approval's own answer still expires it
        lazily, at its own position; under at-least-once nothing is dropped as a redelivery,
        so expiries stay as the engine decides them (with the event's position and input)."""
        new, decisions = expire_due(state, self.policy, now, kills)
        if new is state:
            return state
        link(new, decisions, self.chain_key)
        if careful:  # first: a state no record can hold raises before anything is out
            out.encoded[key] = new.to_bytes()
        out.decisions.extend((rec.partition, d) for d in decisions)
        self.states[key] = new
        out.changed[key] = (rec.partition, new)
        return new

    def _limit(
        self,
        state: RunState | None,
        event: RunEvent,
        size: int | None,
        kills: KillSwitches,
        now: datetime,
        origin: Origin,
    ) -> tuple[RunState | None, list[Decision]]:
        """``event`` refused for the run's state budget: it would grow the state to ``size``
        bytes (None: the run was stopped at its budget by an earlier event)."""
        self.state_limited += 1
        budget = f"run_state_max_bytes {self.run_state_max_bytes}"
        detail = (
            f"the run was stopped at its state budget ({budget}); the run is stopped"
            if size is None
            else f"the run's state would grow to {size} bytes ({budget}); the run is stopped"
        )
        new, decisions = refuse(
            state, event, self.policy, now, Reason.RUN_STATE_LIMIT, detail, kills, origin
        )
        if new is not None and origin.partition is not None and origin.offset is not None:
            mark_read(new, origin.partition, origin.offset, answers_approval(event))
        # refuse copies a held run's state (never hands back ``state``) and decides one event
        # now (nothing re-emitted): published links what publishable, link and keep_links did
        # (tests/unit/test_attacks_session24_chain.py holds the two equal)
        return new, published(new, state, decisions, event, self.chain_key)

    def account(self, key: bytes, size: int | None) -> None:
        """``key``'s run now takes ``size`` encoded bytes (None: it left the table)."""
        old = self._sizes.pop(key, 0) if size is None else self._sizes.get(key, 0)
        if size is not None:
            kept: Any = _SIZES.setdefault(size, size) if size < _SIZES_SHARED else size
            self._sizes[key] = kept
        self.state_bytes += (size or 0) - old

    def forget_sizes(self) -> None:
        """Partitions moved: sizes are counted again as the sweep re-indexes the table."""
        self._sizes.clear()
        self.state_bytes = 0

    # ------------------------------------------------------------------ the state budget
    def _check_sizes(
        self,
        out: Outputs,
        before: dict[bytes, RunState | None],
        decided: dict[bytes, list[tuple[InputRecord, RunEvent]]],
        kills: KillSwitches,
        now: datetime,
    ) -> None:
        """Encode each changed run once; re-decide, event by event, a run over its budget.

        The fast path measures a run once per batch (the publisher needs its bytes anyway).
        A run over the budget is put back as it was before the batch and its events of
        the batch are decided again one by one, measuring each new state: the event that
        would take it over the budget is the one stopped. Deterministic, so the decisions
        are the ones a one-event-at-a-time worker would have made.
        """
        limit = self.run_state_max_bytes
        over: list[bytes] = []
        for key, (_partition, state) in out.changed.items():
            if state is None or key in out.encoded:
                continue
            try:
                raw = state.to_bytes()
            except (TypeError, ValueError, OverflowError):
                # a value no record can hold (a forged record's counter at 2**64 - 1, one
                # more): decided again one by one, measured, each event its own dead letter
                over.append(key)
                continue
            if len(raw) > limit and not _refused_within_hard(before.get(key), raw):
                over.append(key)
            else:
                out.encoded[key] = raw
        if not over:
            return
        redo = set(over)
        for key in over:
            del out.changed[key]
            self._put_back(key, before.get(key))
        out.decisions = [(p, d) for p, d in out.decisions if d.run_id.encode() not in redo]
        for key in over:
            self._redo(key, before.get(key), decided.get(key, ()), kills, now, out)

    def _redo(
        self,
        key: bytes,
        previous: RunState | None,
        events: Sequence[tuple[InputRecord, RunEvent]],
        kills: KillSwitches,
        now: datetime,
        out: Outputs,
        unmeasured: bool = True,
    ) -> None:
        """Decide a run's events of the batch again, one by one, each measured; a run already
        stopped at its budget is refused unmeasured and encoded once at the end, unless
        that passes the hard limit: then again (``unmeasured`` False) measured, as any other."""
        mark = len(out.decisions), len(out.dead_letters)
        for rec, event in events:
            try:
                state = self.states.get(key)
                self._decide(
                    rec, key, event, state, kills, now, out, careful=True, unmeasured=unmeasured
                )
            except Exception as exc:
                out.dead_letters.append(self._refused(rec, exc, now))
        changed = out.changed.get(key)
        if changed is None or key in out.encoded or changed[1] is None:
            return
        raw = changed[1].to_bytes()
        if len(raw) <= HARD_STATE_MAX_BYTES or not unmeasured:
            out.encoded[key] = raw
            return
        del out.changed[key], out.decisions[mark[0] :], out.dead_letters[mark[1] :]
        self._put_back(key, previous)
        self._redo(key, previous, events, kills, now, out, unmeasured=False)

    def _put_back(self, key: bytes, previous: RunState | None) -> None:
        """The run ``key`` as it was before the batch (``previous``; None: not held)."""
        if previous is None:
            self.states.pop(key, None)
        else:
            self.states[key] = previous
