"""A stored reply's rows back into decisions: the columns format 4 names, a state's own
``cols``, and the rows formats 1-3 wrote in the Decision field order of their day.

``REPLY_COLUMNS`` are Decision's fields when format 4 was made, frozen; ``WRITE_COLUMNS`` what
this Decision writes. A plan per column list (``_Columns``) turns a row into a Decision: its
times parsed, its enum columns looked up. Read by processors/state_replies.py (a kept reply
turned back into decisions) and processors/state_wire.py (a record's ``rec``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import orjson

from baton.schemas.decision import DECISION_FIELDS, Decision, Fallback, Outcome, Phase

__all__ = [
    "HELD_COLUMNS",
    "REPLY_COLUMNS",
    "WRITE_COLUMNS",
    "old_row_decision",
    "recent_from_wire",
]

#: the reply columns of a format-4 state without ``cols``: Decision's fields when format 4
#: was made, frozen (a new Decision field makes writers add ``cols``; add a format then)
REPLY_COLUMNS: Final[tuple[str, ...]] = (
    "decision_id", "request_id", "run_id", "tenant", "phase", "outcome", "reason", "owner",
    "from_agent", "to_agent", "task_id", "parent_task_id", "action", "depth",
    "handoff_count", "spent_usd", "tool_calls", "handoff_status", "fallback", "approval_id",
    "approval_expires_at", "approver", "policy_version", "event_time", "decided_at",
    "worker", "partition", "offset", "shadow_outcome", "tool", "reserved_usd", "detail",
    "request_digest", "chain_prev", "chain_hash", "input", "reemitted",
)  # fmt: skip
#: what this Decision writes: the frozen columns while they are its fields, else its own
WRITE_COLUMNS: Final = None if DECISION_FIELDS == REPLY_COLUMNS else list(DECISION_FIELDS)
_DECISION_FIELD_SET: Final = frozenset(DECISION_FIELDS)


_TIME_FIELDS: Final = frozenset({"approval_expires_at", "event_time", "decided_at"})
# text -> member by dict lookup: calling the enum (Phase("approval")) is several times slower,
# and the worker restores a run's replies every time it reads the run from the changelog
_PHASES: Final[dict[str, Phase]] = {m.value: m for m in Phase}
_OUTCOMES: Final[dict[str | None, Outcome | None]] = {None: None, **{m.value: m for m in Outcome}}
_FALLBACKS: Final[dict[str | None, Fallback | None]] = {
    None: None,
    **{m.value: m for m in Fallback},
}
#: column -> text-to-value table for the enum columns (a required one has no None)
_ENUMS: Final[dict[str, dict[Any, Any]]] = {
    "phase": _PHASES,
    "outcome": {m.value: m for m in Outcome},
    "shadow_outcome": _OUTCOMES,
    "fallback": _FALLBACKS,
}
#: the columns by the type a Decision holds there (the enum and time columns: above): a
#: row's value of another type is refused at the read, in both builds alike (a compiled
#: Decision refused it with a TypeError, the interpreted one held it and decided on it)
_TEXTS: Final = frozenset(
    {"decision_id", "request_id", "run_id", "tenant", "reason", "policy_version"}
)
_COUNTS: Final = frozenset({"depth", "handoff_count", "tool_calls"})
_MAYBE_INTS: Final = frozenset({"partition", "offset"})
_AMOUNTS: Final = frozenset({"spent_usd", "reserved_usd"})
_FLAGS: Final = frozenset({"reemitted"})


class _Columns:
    """How to turn rows with the given column names into Decisions (one per column list)."""

    __slots__ = ("amounts", "enums", "flags", "ints", "maybe_ints", "maybe_texts", "names",
                 "positional", "shapes", "texts", "times")  # fmt: skip

    def __init__(self, names: tuple[str, ...]) -> None:
        unknown = [c for c in names if c not in _DECISION_FIELD_SET]
        if unknown:
            raise ValueError(
                f"run state replies have columns {unknown} that Decision does not have; "
                "written by a newer Baton?"
            )
        #: rows can go to Decision(*row) as they are
        self.positional = names == DECISION_FIELDS[: len(names)]
        self.names = names
        self.times = [i for i, c in enumerate(names) if c in _TIME_FIELDS]
        self.enums = [(i, _ENUMS[c]) for i, c in enumerate(names) if c in _ENUMS]
        typed = _TEXTS | _COUNTS | _MAYBE_INTS | _AMOUNTS | _FLAGS | _TIME_FIELDS | set(_ENUMS)
        self.texts = [i for i, c in enumerate(names) if c in _TEXTS]
        self.maybe_texts = [i for i, c in enumerate(names) if c not in typed]
        self.ints = [i for i, c in enumerate(names) if c in _COUNTS]
        self.maybe_ints = [i for i, c in enumerate(names) if c in _MAYBE_INTS]
        self.amounts = [i for i, c in enumerate(names) if c in _AMOUNTS]
        self.flags = [i for i, c in enumerate(names) if c in _FLAGS]
        #: the rows' tuples of value types seen to pass ``_check`` unchanged (interpreted):
        #: one set lookup a row instead of a type test a value (a few shapes: which are none)
        self.shapes: set[tuple[type, ...]] = set()

    def decision(self, row: list[Any]) -> Decision:
        if len(row) != len(self.names):
            raise ValueError(f"run state reply has {len(row)} values for {len(self.names)} columns")
        self._check(row)
        for i in self.times:
            if row[i] is not None:
                row[i] = datetime.fromisoformat(row[i])
        i = 0
        try:
            for i, table in self.enums:
                row[i] = table[row[i]]
        except KeyError:  # (text or none here: _check)
            raise self._refused(i, row[i]) from None
        if self.positional:
            return Decision(*row)
        return Decision(**dict(zip(self.names, row, strict=True)))

    def _check(self, row: list[Any]) -> None:
        """``row``'s values of the types a Decision holds (an int amount made a float, as a
        compiled Decision makes it), else a ValueError naming the column."""
        shape: tuple[type, ...] = ()
        if not _COMPILED:  # (compiled, the tests below cost less than making the tuple)
            shape = tuple(map(type, row))
            if shape in self.shapes:
                return
        for i in self.texts:
            if type(row[i]) is not str:
                raise self._refused(i, row[i])
        for i in self.maybe_texts:
            value = row[i]
            if value is not None and type(value) is not str:
                raise self._refused(i, value)
        for i in self.times:  # (the enums' values are looked up: text or none only)
            value = row[i]
            if value is not None and type(value) is not str:
                raise self._refused(i, value)
        for i, _table in self.enums:
            value = row[i]
            if value is not None and type(value) is not str:
                raise self._refused(i, value)
        for i in self.ints:
            if type(row[i]) is not int:
                raise self._refused(i, row[i])
        for i in self.maybe_ints:
            value = row[i]
            if value is not None and type(value) is not int:
                raise self._refused(i, value)
        for i in self.flags:
            if type(row[i]) is not bool:
                raise self._refused(i, row[i])
        same = True
        for i in self.amounts:
            value = row[i]
            if type(value) is not float:
                if type(value) is not int:
                    raise self._refused(i, value)
                row[i], same = float(value), False
        if same and shape and len(self.shapes) < 64:
            self.shapes.add(shape)

    def _refused(self, i: int, value: Any) -> ValueError:
        return ValueError(
            f"run state reply column {self.names[i]}: {str(value)[:40]!r} "
            f"({type(value).__name__}) is not what a decision holds there"
        )


#: this module is compiled (BATON_COMPILE=1)
_COMPILED: Final = not __file__.endswith(".py")
_FROZEN_COLUMNS: Final = _Columns(REPLY_COLUMNS)
#: the columns of a reply held as bytes in memory: this Decision's fields, in their order
HELD_COLUMNS: Final = _FROZEN_COLUMNS if WRITE_COLUMNS is None else _Columns(DECISION_FIELDS)
_CHAIN_HASH: Final = DECISION_FIELDS.index("chain_hash")


_ROW_LENGTH: Final = len(DECISION_FIELDS)


def _linked_rows(rows: list[Any]) -> bool:
    """True when every row is a full row with its chain link (held as bytes when read)."""
    for row in rows:
        if type(row) is not list or len(row) != _ROW_LENGTH or row[_CHAIN_HASH] is None:
            return False
    return True


#: a reader's column plans by column list (a state's own ``cols``): a few at most
_PLANS: Final[dict[tuple[str, ...], _Columns]] = {}
#: formats 1-3 wrote rows in the Decision field order of their day, which the first
#: columns of REPLY_COLUMNS are (fields were only ever appended): see old_row_decision


def _known_plans() -> None:
    _PLANS[REPLY_COLUMNS] = _FROZEN_COLUMNS
    _PLANS[DECISION_FIELDS] = HELD_COLUMNS


_known_plans()


def _plan(cols: list[str] | None) -> _Columns:
    if cols is None:
        return _FROZEN_COLUMNS
    key = tuple(cols)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 16:
            _PLANS.clear()
            _known_plans()
        plan = _PLANS[key] = _Columns(key)
    return plan


def recent_from_wire(
    entries: Sequence[Any], cols: list[str] | None, old: bool = False, checked: bool = False
) -> tuple[Any, ...]:
    """``RunState.recent`` from its rows; ``old``: formats 1-3, whose rows may be shorter
    (written by an older Decision: the missing trailing fields take their defaults);
    ``checked``: linked rows known to be decisions are held without building them again."""
    plan = _plan(cols)
    to_decision = old_row_decision if old else plan.decision
    hold = plan is HELD_COLUMNS and not old
    recent: list[Any] = []
    for entry in entries:
        if type(entry) is not list or len(entry) != 2 or type(entry[1]) is not list:
            raise ValueError(f"run state key rec: expected [key, rows], got {str(entry)[:80]!r}")
        key, rows = entry
        if type(key) is not str:
            # a reply's key is looked up and written back as text (state_replies): compiled,
            # another type raised a TypeError at the run's writes (engine_error at each event)
            raise ValueError(f"run state reply key {str(key)[:80]!r}: expected text")
        recent.append(key)
        if hold and _linked_rows(rows):
            # linked replies stay their rows' bytes, once each row proved a Decision
            # (a record that does not is unreadable now, not at a retry)
            raw = bytes(memoryview(orjson.dumps(rows)))
            if not checked:
                for r in rows:
                    to_decision(r)
            recent.append(raw)
        else:
            for r in rows:
                if type(r) is not list:
                    raise ValueError(f"run state reply {key[:80]!r}: a row is not a list")
            if len(rows) == 1:
                recent.append(to_decision(rows[0]))
            else:
                recent.append([to_decision(r) for r in rows])
    return tuple(recent)


def old_row_decision(row: list[Any]) -> Decision:
    if len(row) < len(REPLY_COLUMNS):
        return _Columns(REPLY_COLUMNS[: len(row)]).decision(row)
    return _FROZEN_COLUMNS.decision(row)
