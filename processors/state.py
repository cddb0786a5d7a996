"""Per-run governance state (the ``runs`` table value) and its compact serialization.

One ``RunState`` holds everything the engine knows about a run: task tree with owners,
agents, counters, shared spend and reservations, pending approvals, and the request ids it
has already decided (the idempotency marks live *inside* the value, so a state change and
its dedup mark are one changelog write). Every collection in it is bounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from baton.processors.dedup_keys import REPORT, TOMBSTONE_REPORT
from baton.processors.state_compact import EMPTY, compact_digest, shared
from baton.processors.state_compact import FRESH_TUPLE_MAX as _FRESH_TUPLE_MAX
from baton.processors.state_compact import OneTask as _OneTask
from baton.processors.state_compact import digest_hex as _digest_hex
from baton.processors.state_compact import fresh_added as _fresh_added
from baton.processors.state_compact import fresh_digest as _fresh_digest
from baton.processors.state_compact import fresh_digest_list as _fresh_digest_list
from baton.processors.state_compact import fresh_of as _fresh_of
from baton.processors.state_compact import fresh_thawed as _fresh_thawed
from baton.processors.state_types import (
    FRESH_LIMIT,
    MAX_PENDING_APPROVALS,
    RECENT_REPLIES,
    SEEN_LIMIT,
    STATE_FORMAT,
    TASK_FOLD,
    PendingApproval,
    Reservation,
    TaskNode,
    intern,
)
from baton.schemas.decision import Decision

__all__ = [
    "EMPTY",
    "MAX_PENDING_APPROVALS",
    "RECENT_REPLIES",
    "SEEN_LIMIT",
    "STATE_FORMAT",
    "PendingApproval",
    "Reservation",
    "RunState",
    "TaskNode",
    "compact_digest",
    "shared",
]

#: length of RunState.recent when full
_RECENT_ITEMS: Final = 2 * RECENT_REPLIES
#: a start time past this (year 2286) starts a run's seq at 0 (seq_checked bounds a seq)
_SEQ_START_MAX: Final = 1e10
# state_compact is compiled with this module (build_backend/compiled_modules.txt): its
# functions are imported, so a compiled build calls them natively and reads its Final
# constants from C statics


@dataclass(slots=True)
class RunState:
    """The state of one run.

    Every container (``tasks``, ``new_tasks``, ``agents``, ``reserved``, ``pending``,
    ``seen``, ``fresh``, ``digests``, ``bounces``, ``recent``) is replaced, never changed in
    place: a copy shares them with the state it was made from (most events change few of
    them), and an empty one is :data:`EMPTY`, shared by every state (it raises on a change).

    Dedup marks: the run's n-th remembered key gets mark n (``marks`` counts them); a key
    is seen while its mark is among the newest SEEN_LIMIT. New keys go to ``fresh`` (their
    marks are implied: the last ``len(fresh_keys())``), which is folded into ``seen`` (dropping
    marks that fell out of the window) whenever ``marks`` reaches a multiple of
    FRESH_LIMIT, so the split follows from ``marks`` alone and a state restored from its
    wire form is the same state.
    ``reserved_usd`` and ``reserved_tool_calls`` are the sums over ``reserved``, kept by
    :meth:`set_reserved` (the engine reads them for every decision of a run with a
    reservation).

    Every field is required (:meth:`new` makes an empty run): defaults and default
    factories would double the cost of ``__init__``, which :meth:`copy` calls per event.
    """

    run_id: str
    tenant: str
    started_at: float
    last_event_at: float
    handoff_count: int
    spent_usd: float
    tool_calls: int
    #: sticky stop: once set, every later handoff is stopped with this reason
    stopped: str | None
    finished: bool
    #: the task tree: read it with task(), add to it with add_task(); ``new_tasks`` holds
    #: the tasks added since the last merge into ``tasks`` (fewer than TASK_FOLD). Each is a
    #: dict, or once written a dict of one task is a ``state_compact.OneTask`` (read alike)
    #: (keyed by Any: a read record's task ids as it wrote them, never checked by mypyc)
    tasks: Mapping[Any, TaskNode]
    new_tasks: Mapping[Any, TaskNode]
    #: an ordered set, its names interned (apply_allow); a dict, not a tuple: the rules look a
    #: handoff's two agents up in it (tuples here and in ``fresh`` as the engine makes it:
    #: decide +4-5 %, callgrind)
    agents: Mapping[str, None]
    #: request_id -> what an allowed handoff reserved until its completion (or expiry)
    reserved: dict[str, Reservation]
    pending: dict[str, PendingApproval]
    #: key -> mark, marks up to the last fold (may still hold marks that fell out of the
    #: window since: has_seen() ignores them, the next fold drops them)
    seen: dict[str, int]
    #: keys since the last fold, oldest first (fewer than FRESH_LIMIT, all in the window),
    #: each with the digest of the request it was decided for (None for keys without one;
    #: its 8 bytes when it is the engine's 16 hex digits: 48 bytes of memory, not 80). A dict
    #: as the engine makes it; once the state is written or read, up to FRESH_TUPLE_MAX keys
    #: one flat tuple (state_compact.fresh_of: the keys, then their digests joined; 128 bytes
    #: for a short run's two keys where the dict and its digests took 280), added to as a
    #: tuple (fresh_added) until past it. ``key in fresh`` is the engine's test in either
    #: form; read the rest with fresh_keys(), digest_of()
    fresh: Any
    marks: int
    #: the newest RECENT_REPLIES keys and their decisions, oldest first, flat: (key, replies,
    #: key, replies, ...), replies one Decision, a list of several, or ``bytes``: their rows
    #: as the changelog holds them (state_wire.encode turns linked decisions into these;
    #: a Decision object takes twice their size, and they are read back only for a retry or
    #: a redelivery). A flat tuple because these decisions are most of a run's memory, and
    #: the engine's speed on many runs is bound by memory (bench/RESULTS.md); read it with
    #: replies() and recent_keys()
    recent: tuple[Any, ...]
    reserved_usd: float
    reserved_tool_calls: int
    #: digests of the requests behind the folded keys in ``seen`` (a request id seen again
    #: with another request is refused, never answered with the first one's decision)
    digests: dict[str, str]
    #: set when the run was evicted and only this tombstone is left: counters, spend,
    #: stopped/finished and tenant, the reports' dedup marks, nothing else (no tasks, no
    #: replies)
    evicted_at: float | None
    #: the chain_hash of the run's newest chained decision ("" before the first)
    chain_head: str
    #: the sum of the ``steps`` its completions reported (multi_agent.max_steps)
    steps: int
    #: (agent, agent) in name order -> (who handed to the other last, bounces so far):
    #: multi_agent.max_bounces; kept only while a policy counts them
    bounces: dict[tuple[str, str], tuple[str, int]]
    #: the earliest ``expires_at`` of ``reserved`` (None: none expires), kept by set_reserved
    reserved_due: float | None
    #: request_id -> (task_id, agent, names) of a granted handoff whose completion is not
    #: reported yet: the gated names (action, tools) its grant covers (processors/approvals.py)
    grants: dict[str, tuple[str, str, tuple[str, ...]]]
    #: where this life of the run id began (decision_builder.life_of: the topic's letter and
    #: the partition and offset of the event that made the state), in every id of the life;
    #: "" for a run begun before lives were marked (its ids keep their old form)
    life: str
    #: the newest position the worker decided an event of this run at (a redelivery is a
    #: record at or below it: processors/batch_routing.read_before): the partition (-1: none)
    #: and the offsets on the requests and the approvals topic (-1: none yet), as Kafka gave
    #: them here (a forwarded event's own; its header's, exactly, in ``forwarded``). Set by the
    #: worker's batch step only: a run rebuilt by replay or `baton up` has none
    read_partition: int
    read_requests: int
    read_approvals: int
    #: the FORWARDED_FROM positions of the newest forwarded events it decided (a misplaced
    #: event read again is forwarded again, a new record: known by this, exactly, and by
    #: its bytes), flat: (approval 0/1, partition, offset, value digest, ...), at most
    #: FORWARDS_KEPT of them
    forwarded: tuple[int, ...]
    #: one more than the state it was copied from, a new run's its start's ms << 16: its
    #: changelog records' order, which a restore checks (processors/state_gate.py)
    seq: int

    @classmethod
    def new(cls, run_id: str, tenant: str, at: float, life: str = "") -> RunState:
        """A run Baton has not seen before, started at ``at`` (a POSIX timestamp)."""
        # slot by slot, as copy(): the dataclass's __init__ is interpreted code even in a
        # compiled build (~8,000 instructions a new run there, bench/RESULTS.md)
        e = EMPTY
        new = _new_state(RunState)
        new.run_id, new.tenant, new.started_at, new.last_event_at = run_id, intern(tenant), at, at
        new.handoff_count, new.spent_usd, new.tool_calls = 0, 0.0, 0
        new.stopped, new.finished = None, False
        new.tasks = new.new_tasks = new.agents = new.reserved = new.pending = new.seen = e
        new.fresh, new.marks, new.recent = e, 0, ()
        new.reserved_usd, new.reserved_tool_calls, new.digests = 0.0, 0, e
        new.evicted_at, new.chain_head, new.steps, new.bounces = None, "", 0, e
        new.reserved_due, new.grants, new.life = None, e, life
        new.read_partition = new.read_requests = new.read_approvals = -1
        new.forwarded = ()
        # the start's ms << 16: a later life's seq is past all the earlier's (h46b G2)
        new.seq = int(at * 1000) << 16 if 0 < at < _SEQ_START_MAX else 0
        return new

    def tombstone(self, at: float) -> RunState:
        """What eviction keeps of the run: enough that a late event cannot reopen it, nor a
        late copy of a report count twice.

        Tenant, counters, spend, tool calls, steps, the sticky stop, the finished mark, the
        life, the positions read and a mark of each report in the dedup window
        (``TOMBSTONE_REPORT`` + its digest: a report redelivered after the eviction is
        answered ``reply_not_kept``, its cost not counted again; engine_refusals.answer_known)
        survive; the task tree, agents, reservations, approvals, bounces, the other dedup
        marks (a handoff at a tombstone is stopped whatever it is) and the replies do not.
        Marks numbered 1..n, as read back.
        """
        e, digest_of = EMPTY, self.digest_of
        reports = [k for k in self.seen_keys() if k[:2] == REPORT]
        keys = [TOMBSTONE_REPORT + d for k in reports if (d := digest_of(k)) is not None]
        seen, fresh, _ = _wire.marks_from_wire(keys, len(keys), None)
        return RunState(
            self.run_id, self.tenant, self.started_at, self.last_event_at, self.handoff_count,
            self.spent_usd, self.tool_calls, self.stopped, self.finished, e, e, e, e, e,
            seen or e, fresh or e, len(keys), (), 0.0, 0, e, at, self.chain_head, self.steps, e,
            None, e, self.life, self.read_partition, self.read_requests, self.read_approvals,
            self.forwarded, self.seq + 1,
        )  # fmt: skip

    def task(self, task_id: str) -> TaskNode | None:
        # a plain dict asked natively, the shared EMPTY not at all: compiled, .get on a
        # Mapping is a method call (~380 instructions), on a dict a C call
        held = self.new_tasks
        if type(held) is dict:
            node = held.get(task_id)
        else:
            node = None if held is EMPTY else held.get(task_id)
        if node is not None:
            return node
        held = self.tasks
        if type(held) is dict:
            return held.get(task_id)
        return None if held is EMPTY else held.get(task_id)

    def add_task(self, task_id: str, node: TaskNode) -> None:
        """Add a task, or replace its node (a released task's new owner): both dicts are
        replaced, never changed in place; a node in ``new_tasks`` hides its old one in
        ``tasks`` until the merge."""
        held = self.new_tasks
        added = {**(held.as_dict() if type(held) is _OneTask else held), task_id: node}
        if len(added) < TASK_FOLD:
            self.new_tasks = added
        else:
            self.tasks = {**self.tasks, **added}
            self.new_tasks = EMPTY

    def set_reserved(self, reserved: dict[str, Reservation]) -> None:
        """Replace the reservations, their sums and the earliest expiry."""
        self.reserved = reserved or EMPTY
        # 0.0 itself when none: sum() makes a new float (24 bytes a run) even of nothing
        self.reserved_usd = sum([r[0] for r in reserved.values()], 0.0) if reserved else 0.0
        self.reserved_tool_calls = sum([r[1] for r in reserved.values()])
        dues = [r[2] for r in reserved.values() if r[2] is not None]
        self.reserved_due = min(dues) if dues else None

    def copy(self) -> RunState:
        """A copy that can change without touching this one.

        The containers are replaced when they change, never changed in place, so the two
        states share them (a whole copy per event was the engine's largest single cost,
        bench/RESULTS.md). Built slot by slot: calling ``__init__`` with every field costs a
        quarter more, and this runs once per event.
        """
        new = _new_state(RunState)
        new.run_id = self.run_id
        new.tenant = self.tenant
        new.started_at = self.started_at
        new.last_event_at = self.last_event_at
        new.handoff_count = self.handoff_count
        new.spent_usd = self.spent_usd
        new.tool_calls = self.tool_calls
        new.stopped = self.stopped
        new.finished = self.finished
        new.tasks = self.tasks
        new.new_tasks = self.new_tasks
        new.agents = self.agents
        new.reserved = self.reserved
        new.pending = self.pending
        new.seen = self.seen
        new.fresh = self.fresh
        new.marks = self.marks
        new.recent = self.recent
        new.reserved_usd = self.reserved_usd
        new.reserved_tool_calls = self.reserved_tool_calls
        new.digests = self.digests
        new.evicted_at = self.evicted_at
        new.chain_head = self.chain_head
        new.steps = self.steps
        new.bounces = self.bounces
        new.reserved_due = self.reserved_due
        new.grants = self.grants
        new.life = self.life
        new.read_partition = self.read_partition
        new.read_requests = self.read_requests
        new.read_approvals = self.read_approvals
        new.forwarded = self.forwarded
        new.seq = self.seq + 1
        return new

    def remember(self, key: str, decisions: list[Decision], digest: str | None = None) -> None:
        """Mark ``key`` decided; keep its decisions for re-emission while it is recent.

        A key already seen keeps its mark and place and only gets the new decisions: an
        approval re-opened by a handoff redelivered after its own key left the window, then
        expired, is remembered a second time (a second mark would push a real key out of
        the window early, and break the marks' order that the wire form relies on).
        """
        replies = decisions[0] if len(decisions) == 1 else list(decisions)
        recent = self.recent
        if self.has_seen(key):
            i = self._recent_index(key)
            if i is not None:  # new replies, same place
                self.recent = (*recent[: i + 1], replies, *recent[i + 2 :])
                return
        else:
            # a new tuple or dict, never changed in place: a copy of this state shares it
            held = self.fresh
            if type(held) is tuple:  # at rest since the state was written or read
                fresh = _fresh_added(held, key, compact_digest(digest))
            else:  # as the engine makes it (a state never written: replay, what-if)
                fresh = {**held, key: compact_digest(digest)}
            marks = self.marks = self.marks + 1
            if marks % FRESH_LIMIT:
                self.fresh = fresh
            else:
                if type(fresh) is tuple:  # a record's few keys under a high mark count
                    fresh = _fresh_thawed(fresh)
                floor = marks - SEEN_LIMIT
                seen = {k: m for k, m in self.seen.items() if m > floor}
                seen.update(zip(fresh, range(marks - len(fresh) + 1, marks + 1), strict=True))
                self.seen = seen
                old = self.digests
                digests = {k: old[k] for k in seen if k in old}
                digests.update((k, _digest_hex(d)) for k, d in fresh.items() if d is not None)
                self.digests = digests or EMPTY
                self.fresh = EMPTY
        # concatenation, not (*recent, key, replies): the starred form builds a list first
        if len(recent) < _RECENT_ITEMS:
            self.recent = recent + (key, replies)  # noqa: RUF005
        else:
            self.recent = recent[2:] + (key, replies)  # noqa: RUF005

    def has_seen(self, key: str) -> bool:
        """True when ``key`` is among the run's newest SEEN_LIMIT decided keys."""
        if key in self.fresh:
            return True
        seen = self.seen
        if not seen:  # (.get on the shared EMPTY, a dict subclass, is a method call compiled)
            return False
        mark = seen.get(key)
        return mark is not None and mark > self.marks - SEEN_LIMIT

    def digest_of(self, key: str) -> Any:
        """The digest of the request ``key`` was decided for (None if it had none): a str as
        the engine writes it, whatever a read record held otherwise (compared, never used)."""
        fresh = self.fresh
        if key in fresh:
            return _fresh_digest(fresh, key)
        return self.digests.get(key)

    def fresh_keys(self) -> list[str]:
        """The keys decided since the last fold, oldest first."""
        fresh = self.fresh
        return list(fresh[:-1]) if type(fresh) is tuple else list(fresh)

    def rest_fresh(self) -> None:
        """``fresh`` as a written state holds it: one tuple of its few keys (fresh_of)."""
        fresh = self.fresh
        if type(fresh) is dict and len(fresh) <= _FRESH_TUPLE_MAX:
            self.fresh = _fresh_of(fresh)

    def fresh_digests(self) -> list[str | None]:
        """The digests of ``fresh``'s keys, in their order, as the engine made them."""
        return _fresh_digest_list(self.fresh)

    def folded_keys(self) -> list[str]:
        """The window's keys folded into ``seen``, oldest first."""
        floor = self.marks - SEEN_LIMIT
        return [k for k, m in self.seen.items() if m > floor]

    def seen_keys(self) -> list[str]:
        """The run's newest SEEN_LIMIT decided keys, oldest first."""
        return self.folded_keys() + self.fresh_keys()

    def __eq__(self, other: object) -> bool:
        # equal when they would decide alike: the same wire form (which leaves out the
        # marks that fell out of the window but were not folded away yet)
        if not isinstance(other, RunState):
            return NotImplemented
        return self.to_wire() == other.to_wire()

    # (no __hash__ = None: the dataclass sets it; mypyc would take it for a field)

    def replies(self, key: str) -> list[Decision] | None:
        """The decisions kept for ``key`` (a new list), None when it is not among the recent."""
        i = self._recent_index(key)
        if i is None:
            return None
        kept = self.recent[i + 1]
        if type(kept) is Decision:
            return [kept]
        if isinstance(kept, bytes):  # packed or spilled (state_spill.SpilledBundle)
            return _wire.replies_from_rows(kept, key)
        return list(kept)

    def _recent_index(self, key: str) -> int | None:
        """Where ``key`` stands in ``recent`` (its replies follow it), newest first."""
        recent = self.recent
        for i in range(len(recent) - 2, -1, -2):
            if recent[i] == key:
                return i
        return None

    def recent_keys(self) -> list[str]:
        """The keys whose decisions are kept, oldest first."""
        return list(self.recent[::2])

    # ------------------------------------------------------------------ serialization
    def to_bytes(self) -> bytes:
        """The changelog record of this state (keyed, versioned: processors/state_wire.py)."""
        return _wire.encode(self)

    def to_wire(self) -> dict[str, Any]:
        """The map that :meth:`to_bytes` writes."""
        return _wire.to_wire(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> RunState:
        """A state from its changelog record, written in any readable format, or from the
        record's held form (processors/state_held.py)."""
        return _wire.decode(raw)

    @classmethod
    def from_record(cls, key: bytes, raw: bytes) -> RunState:
        """The state the changelog record ``raw`` holds under ``key``: :meth:`from_bytes`,
        refused (``ValueError``) when it is another run's (a writer of the changelog copying
        run B's record under A's key had A's events decided on B's state, as run B's)."""
        state = _wire.decode(raw)
        if type(state.run_id) is not str or state.run_id.encode() != key:
            raise ValueError(
                f"the record under key {key[:80]!r} is run {str(state.run_id)[:80]!r}'s state"
            )
        return state

    @classmethod
    def from_wire(cls, w: Any) -> RunState:
        """A state from a decoded record (a format-4 map, or a format 1-3 list)."""
        return _wire.from_wire(w)


#: object.__new__ when interpreted; a compiled class needs its own (its native layout)
_new_state: Final = RunState.__new__
# the wire form reads and writes RunState: imported once RunState exists
from baton.processors import state_wire as _wire  # noqa: E402
