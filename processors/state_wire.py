"""The run state's bytes on the changelog: format 4 written (a map with short keys), 1-4 read.

Format 4 is a JSON map (orjson) whose keys are in ``STATE_KEYS`` (RunState field -> short key);
a field a reader does not know is ignored, a key it lacks takes the field's empty value, so
a field added later needs no format bump as long as its empty value means "as before".
Rows inside it are fixed columns named once here: tasks ``[task_id, *TaskNode]``,
reservations ``[request_id, *Reservation]``, bounces ``[agent, agent, last giver, count]``,
grants ``[request_id, task_id, agent, names]`` (read back checked: processors/state_row_checks.py),
pending approvals ``[approval_id, request as JSON, expires_at, created_at]``.

Stored replies (a run's newest decisions, for re-emission) are rows of named columns,
written and read by processors/state_replies.py: ``REPLY_COLUMNS`` when the state has no
``cols`` key, else the state's own list; in memory a linked reply is held as its rows' bytes.

Formats 1-3 (positional lists read back as ``w[1]`` ...) are still read: old changelogs.
Not guaranteed: a state written by a newer Baton with a reply column this one lacks is
refused (``ValueError``), never read with the column dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import orjson

from baton.processors.state import (
    EMPTY,
    FRESH_LIMIT,
    STATE_FORMAT,
    PendingApproval,
    RunState,
    TaskNode,
    compact_digest,
    intern,
    shared,
)
from baton.processors.state_compact import fresh_of
from baton.processors.state_held import is_held, record_of
from baton.processors.state_replies import (
    REPLY_COLUMNS,
    WRITE_COLUMNS,
    recent_from_wire,
    recent_rows,
    recent_to_wire,
    replies_from_rows,
)
from baton.processors.state_row_checks import (
    NO_DIGEST,
    bounces_from_wire,
    forwarded_from_wire,
    grants_from_wire,
    is_count,
    map_checked,
    read_from_wire,
    reservations_from_wire,
    seq_checked,
    width_checked,
)
from baton.schemas.decision import Reason
from baton.schemas.events import MAX_RUN_USD, HandoffRequested

__all__ = [
    "REPLY_COLUMNS",
    "STATE_KEYS",
    "decode",
    "encode",
    "marks_from_wire",
    "replies_from_rows",
    "to_wire",
]

_READABLE_FORMATS: Final = frozenset({1, 2, 3, 4})
# (Final aliases: a compiled build reads them from C statics, not through this module's dict)
_TaskNode: Final = TaskNode

#: RunState field -> its key in format 4; the fields not listed are derived from these
#: (``DERIVED``); tests/unit/test_state_format.py fails on a field in neither
STATE_KEYS: Final[dict[str, str]] = {
    "run_id": "run",
    "tenant": "tn",
    "started_at": "t0",
    "last_event_at": "t",
    "handoff_count": "hc",
    "spent_usd": "usd",
    "tool_calls": "tc",
    "stopped": "stop",
    "finished": "fin",
    "tasks": "tasks",  # with new_tasks merged
    "agents": "ag",
    "reserved": "res",
    "pending": "pend",
    "seen": "keys",  # the window's keys, oldest first (seen and fresh)
    "marks": "mk",
    "digests": "dg",  # one per key in "keys" (fresh's and the folded ones')
    "recent": "rec",
    "evicted_at": "ev",
    "chain_head": "ch",
    "steps": "st",
    "bounces": "bn",
    "grants": "gr",
    "life": "lf",  # written only when set: "" (a run begun before lives) is its absence
    # [partition, requests offset, approvals offset], written only when set (none: -1s)
    "read_partition": "rd",
    # [[approval 0/1, partition, offset], ...] of forwarded events decided, only when any
    "forwarded": "fw",
    "seq": "sq",  # the record's last key (encode's only: to_wire's equal maps decide alike)
}
#: RunState fields rebuilt from the keyed ones when read ("rd" holds the read_* three)
DERIVED: Final = frozenset(
    {
        "new_tasks", "fresh", "reserved_usd", "reserved_tool_calls", "reserved_due",
        "read_requests", "read_approvals",
    }
)  # fmt: skip


# =========================================================================== writing


def encode(state: RunState) -> bytes:
    """The state's changelog record (format STATE_FORMAT); its linked replies are kept as
    their rows' bytes from now on (``RunState.recent``), its small task and agent dicts as
    the copies equal runs share (``state.shared``), its few fresh keys one tuple."""
    if type(state.agents) is dict:  # not shared yet (EMPTY and shared ones are not dicts)
        state.agents = shared(state.agents)
    if type(state.new_tasks) is dict:
        state.new_tasks = shared(state.new_tasks, nodes=True)
    if type(state.tasks) is dict:
        state.tasks = shared(state.tasks, nodes=True)
    state.rest_fresh()
    wire = _wire_map(state, recent_rows(state))
    wire["sq"] = state.seq  # last: a restore reads it from the record's end (state_gate.py)
    return orjson.dumps(wire)


def to_wire(state: RunState) -> dict[str, Any]:
    """The state as the map that ``encode`` writes (equal maps: states that decide alike)."""
    return _wire_map(state, recent_to_wire(state.recent))


def _wire_map(state: RunState, rec: Any) -> dict[str, Any]:
    # rec: recent_rows's answer, an orjson.Fragment or []
    folded = state.folded_keys()
    keys = folded + state.fresh_keys()  # state.seen_keys()
    digests = state.digests
    wire: dict[str, Any] = {
        "v": STATE_FORMAT,
        "run": state.run_id,
        "tn": state.tenant,
        "t0": state.started_at,
        "t": state.last_event_at,
        "hc": state.handoff_count,
        "usd": state.spent_usd,
        "tc": state.tool_calls,
        "stop": state.stopped,
        "fin": state.finished,
        "tasks": _tasks_to_wire(state),
        "ag": list(state.agents),
        "res": [[k, *r] for k, r in state.reserved.items()],
        "pend": [
            [p.approval_id, p.request.model_dump(mode="json"), p.expires_at, p.created_at]
            for p in state.pending.values()
        ],
        "keys": keys,
        "mk": state.marks,
        "dg": [digests.get(k) for k in folded] + state.fresh_digests(),
        "rec": rec,
        "ev": state.evicted_at,
        "ch": state.chain_head,
        "st": state.steps,
        "bn": [[a, b, last, n] for (a, b), (last, n) in state.bounces.items()],
        "gr": [[k, g[0], g[1], list(g[2])] for k, g in state.grants.items()],
    }
    if state.life:
        wire["lf"] = state.life
    if state.read_partition >= 0:
        wire["rd"] = [state.read_partition, state.read_requests, state.read_approvals]
    if state.forwarded:
        f = state.forwarded
        wire["fw"] = [
            [f[i], f[i + 1], f[i + 2]]
            if f[i + 3] == NO_DIGEST
            else [f[i], f[i + 1], f[i + 2], f[i + 3]]
            for i in range(0, len(f), 4)
        ]
    if WRITE_COLUMNS is not None and state.recent:
        wire["cols"] = WRITE_COLUMNS
    if state.evicted_at is not None:
        # a tombstone is kept for weeks and is mostly empty: only what it holds (a reader
        # takes a missing key as its field's empty value; its reports' marks have no digests)
        if not any(wire["dg"]):
            wire["dg"] = None
        return {k: v for k, v in wire.items() if v or k in _TOMBSTONE_KEEPS}
    return wire


#: keys a tombstone writes even when falsy (the reader needs them or cannot default them)
_TOMBSTONE_KEEPS: Final = frozenset({"v", "run", "tn", "t0", "t", "ev"})


def _tasks_to_wire(state: RunState) -> list[list[Any]]:
    """The task tree in the order tasks were first added; a replaced node (a released
    task's new owner, in ``new_tasks``) stands at its task's first place, as it will
    after the merge."""
    tasks, added = state.tasks, state.new_tasks
    if not tasks:  # most runs (fewer than TASK_FOLD tasks): no generator over a OneTask
        return [[k, *t] for k, t in added.items()]
    if not any(k in tasks for k in added):
        return [[k, *t] for part in (tasks, added) for k, t in part.items()]
    return [[k, *t] for k, t in {**tasks, **added}.items()]


# =========================================================================== reading


def decode(raw: bytes) -> RunState:
    """A state from its changelog record, any readable format, or from its held form
    (processors/state_held.py: an idle run in the worker's memory, whose reply rows this
    process checked when it first read them)."""
    if is_held(raw):
        return from_wire(orjson.loads(record_of(raw)), rows_checked=True)
    return from_wire(orjson.loads(raw))


def from_wire(w: Any, rows_checked: bool = False) -> RunState:
    """A state from a decoded record: a format-4 map, or a format 1-3 list; ``rows_checked``:
    its reply rows are known to be decisions (a held record), not checked again."""
    if type(w) is dict:
        version = w.get("v")
        if version != 4:
            raise ValueError(f"run state format {version!r} is not one of {_formats()}")
        return _from_map(w, rows_checked)
    if type(w) is not list or not w or w[0] not in _READABLE_FORMATS:
        head = w[0] if type(w) is list and w else w
        raise ValueError(f"run state format {head!r} is not one of {_formats()}")
    return _from_list(w)


def _formats() -> list[int]:
    return sorted(_READABLE_FORMATS)


def _from_map(w: dict[str, Any], rows_checked: bool, old: bool = False) -> RunState:
    map_checked(w)
    keys = w.get("keys", [])
    marks = w.get("mk", len(keys))
    seen, fresh, digests = marks_from_wire(keys, marks, w.get("dg"))
    cols = w.get("cols")
    handoffs, usd, tools, stop, fin = _totals(
        w.get("hc", 0), w.get("usd", 0.0), w.get("tc", 0), w.get("stop"), w.get("fin", False)
    )
    read_p, read_r, read_a = read_from_wire(w.get("rd"))
    state = RunState(
        w["run"],
        intern(w["tn"]),
        w["t0"],
        w["t"],
        handoffs,
        usd,
        tools,
        stop,
        fin,
        _tasks_from_wire(w.get("tasks", ())),
        EMPTY,
        shared(dict.fromkeys(map(intern, w.get("ag", ())))) or EMPTY,
        reservations_from_wire(w.get("res", ()), old) or EMPTY,
        {p[0]: _pending_from_wire(p) for p in w.get("pend", ())} or EMPTY,
        seen or EMPTY,
        fresh or EMPTY,
        marks,
        recent_from_wire(w.get("rec", ()), cols, old, rows_checked),
        0.0,
        0,
        digests or EMPTY,
        w.get("ev"),
        _chain_head(w.get("ch", "")),
        _steps(w.get("st", 0)),
        bounces_from_wire(w.get("bn", ())) or EMPTY,
        None,
        grants_from_wire(w.get("gr", ())) or EMPTY,
        _life(w.get("lf", "")),
        read_p, read_r, read_a, forwarded_from_wire(w.get("fw")), seq_checked(w.get("sq", 0)),
    )  # fmt: skip
    if state.reserved:
        state.set_reserved(state.reserved)
    return _timed(state, w["t0"], w["t"], w.get("ev"), w.get("pend", ()))


_NUMBERS: Final = frozenset({float, int})
#: the stop reasons a record may carry (the engine sets ``stopped`` to a Reason's value)
_REASONS: Final = frozenset(r.value for r in Reason)
_MAX_USD: Final = MAX_RUN_USD


def _totals(hc: Any, usd: Any, tc: Any, stop: Any, fin: Any) -> tuple[int, float, int, Any, bool]:
    """A record's counters, spend, sticky stop and finished flag as the engine writes them
    (counts are ints, never bools, within MAX_RUN_COUNT; spend a number within MAX_RUN_USD;
    the stop a Reason's value or none; finished a bool), else a ValueError (the run's events
    are refused ``state_unreadable``). Both builds alike: a compiled RunState would read a
    bool as a count (and chain it as 0, where the interpreter chained ``false``) and refuse a
    float stop that the interpreter published as a stop's reason."""
    for name, n in (("hc", hc), ("tc", tc)):
        if not is_count(n):
            raise ValueError(f"run state key {name}: expected a count, got {str(n)[:40]!r}")
    if type(usd) not in _NUMBERS or not 0 <= usd <= _MAX_USD:  # NaN fails both comparisons
        raise ValueError(f"run state key usd: expected an amount in USD, got {str(usd)[:40]!r}")
    if stop is not None and (type(stop) is not str or stop not in _REASONS):
        raise ValueError(f"run state key stop: expected a stop reason, got {str(stop)[:40]!r}")
    if type(fin) is not bool:
        raise ValueError(f"run state key fin: expected true or false, got {str(fin)[:40]!r}")
    return hc, usd, tc, stop, fin


def _chain_head(head: Any) -> str:
    """The stored chain head (text: "" before the run's first link), or a ValueError: a compiled
    RunState refused another type at the read, the interpreter at each event (engine_error)."""
    if type(head) is not str:
        raise ValueError(f"run state key ch: expected a chain hash, got {str(head)[:40]!r}")
    return head


def _steps(steps: Any) -> int:
    """The stored steps (a count, as ``_totals``'s), or a ValueError (see ``_chain_head``)."""
    if not is_count(steps):
        raise ValueError(f"run state key st: expected a count, got {str(steps)[:40]!r}")
    return steps


def _timed(state: RunState, started: Any, last: Any, evicted: Any, pending: Any) -> RunState:
    """``state`` when every time the sweep computes with is a number, else a ValueError: the
    sweep does arithmetic on them outside any one record's step, so a record holding text
    there would end the worker's timer (and the worker) at every restart. The times are the
    record's own values (t0, t, ev, the pending approvals' rows): a compiled RunState or
    PendingApproval holds a float for a bool there (mypyc converts it), which would pass."""
    if (
        type(started) in _NUMBERS
        and type(last) in _NUMBERS
        and evicted is None
        and not state.pending
        and not state.reserved
    ):
        return state  # a live run's usual record
    times = [started, last]
    maybe = [evicted]  # None: not evicted, or a reservation that never expires
    for p in pending:  # rows as read: _pending_from_wire's
        times += (p[2], p[3] if len(p) > 3 else 0.0)
    for r in state.reserved.values():
        maybe.append(r.expires_at)
    bad = [t for t in times if type(t) is not float and type(t) is not int]
    bad += [t for t in maybe if t is not None and type(t) is not float and type(t) is not int]
    if bad:
        raise ValueError(
            f"run state of {str(state.run_id)[:80]!r}: a time (t0, t, ev, an approval's or a "
            f"reservation's expiry) is {str(bad[0])[:40]!r}: expected a number of seconds"
        )
    return state


def _life(life: Any) -> str:
    """The stored life mark (decision_builder.life_of), or a ValueError: it goes into every
    decision id of the run, so a forged one is refused, never decided on."""
    if life == "" or (type(life) is str and _LIFE.fullmatch(life)):
        return life
    raise ValueError(
        f"run state key lf: expected a life mark (r or a, partition, ':', offset: r0:17), "
        f"got {str(life)[:60]!r}"
    )


_LIFE: Final = re.compile(r"[ar][0-9]{1,10}:[0-9]{1,20}")


def _tasks_from_wire(rows: Any) -> Mapping[Any, TaskNode]:
    """The task tree from its rows, agent names interned (shared by every run that uses them;
    task ids are mostly a run's own)."""
    tasks: dict[Any, Any] = {}
    for row in rows:
        if type(row) is not list or len(row) != 5:  # (a compiled unpack words its error apart)
            width_checked("tasks", row, 5)
        task, owner, giver, parent, depth = row
        tasks[task] = _TaskNode(intern(owner), intern(giver), parent, depth)
    return shared(_depths_checked(tasks), nodes=True) or EMPTY


def _depths_checked(tasks: dict[Any, Any]) -> dict[Any, Any]:
    """``tasks`` when every depth is an int, else a ValueError: equal runs share one task
    dict, found by its items, and ``1.0 == True == 1``, so another type here would be
    written into every run that shares it (its records and decisions), not this run's only.
    The nodes are read as Any: a compiled build reading a TaskNode's ``depth`` (an int) unboxes
    a bool to 1, so the check passed and the bool was kept (and written back)."""
    for task, node in tasks.items():
        if type(node.depth) is not int:
            raise ValueError(
                f"run state: task {task[:80]!r} has depth {str(node.depth)[:40]!r}: expected "
                "an integer"
            )
        if node.parent is not None and type(node.parent) is not str:  # (`false` read as none)
            raise ValueError(
                f"run state: task {task[:80]!r} has parent {str(node.parent)[:40]!r}: expected "
                "a task id or none"
            )
    return tasks


def _from_list(w: list[Any]) -> RunState:
    """Formats 1-3: positional, read as the format-4 map of the same values (checked alike:
    a forged old record's value of another type was read by the interpreter, refused by a
    compiled build); what a format lacks takes its empty value."""
    return _from_map(dict(zip(_POSITIONS, w[1:])), False, old=True)  # noqa: B905


#: formats 1-3's positions 1.. as format 4's keys (format 1 ends at "rec")
_POSITIONS: Final = ("run", "tn", "t0", "t", "hc", "usd", "tc", "stop", "fin", "tasks", "ag",
                     "res", "pend", "keys", "rec", "mk", "dg", "ev", "ch", "st", "bn")  # fmt: skip


def _pending_from_wire(p: list[Any]) -> PendingApproval:
    created = p[3] if len(p) > 3 else 0.0
    return PendingApproval(p[0], HandoffRequested.model_validate(p[1]), p[2], created)


def marks_from_wire(
    keys: list[str], marks: int, digests: list[str | None] | None
) -> tuple[dict[str, int], Any, dict[str, str]]:
    """``seen``, ``fresh`` and ``digests`` from the window's keys (oldest first) and their
    digests (one each; None: a format without them): the newest ``marks % FRESH_LIMIT`` keys
    are the ones not folded yet (RunState.remember)."""
    if digests is None:
        digests = [None] * len(keys)
    elif len(digests) != len(keys):
        raise ValueError(
            f"run state has {len(digests)} request digests for {len(keys)} keys: expected one "
            "for each key"
        )
    rows: Any = digests  # (Any: each value checked here, in both builds alike)
    for digest in rows:
        if digest is not None and type(digest) is not str:  # (tests/unit/test_state_wire_digests)
            raise ValueError(
                f"run state has a request digest {str(digest)[:40]!r} "
                f"({type(digest).__name__}): expected text or none"
            )
    split = max(len(keys) - marks % FRESH_LIMIT, 0)  # none folded in a run of fewer keys
    # through a dict: a record's repeated key is one mark, an unhashable one unreadable
    fresh = fresh_of(dict(zip(keys[split:], map(compact_digest, digests[split:]), strict=True)))
    first = marks - len(keys) + 1
    seen = dict(zip(keys[:split], range(first, first + split), strict=True))
    folded = {k: d for k, d in zip(keys[:split], digests[:split], strict=True) if d is not None}
    return seen, fresh, folded
