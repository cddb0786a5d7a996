"""A run's stored replies on the changelog: decisions as rows of named columns, and back.

A run keeps its newest decisions (``RunState.recent``) to answer a retry or a redelivery
with the same decision. On the changelog (format 4, processors/state_wire.py) they are rows
whose columns are ``REPLY_COLUMNS`` (Decision's fields when format 4 was made, frozen), or
the state's own ``cols`` when this Decision has other fields. In memory a run's linked
replies are held as one bundle once the state is written (processors/state_bundle.py: the
ids as bytes, the rest lz4 with a dictionary of typical rows; a short run's two decisions
~330 bytes, ~920 as JSON and ~2.2 KB as ``Decision`` objects), appended to at each write
and turned back into decisions only when a retry or redelivery needs them. Formats
1-3 wrote rows in the Decision field order of their day, a prefix of REPLY_COLUMNS
(``old_row_decision``).

Not guaranteed: that a packed reply is smaller than its JSON (a reply of random text is
not); it never leaves the process (the changelog holds the JSON), so its form can change
with any release.
"""

from __future__ import annotations

from datetime import datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import orjson

from baton.processors.state_bundle import (
    BUNDLE,
    REPLY_COLUMNS,
    bundle,
    bundle_appended,
    bundle_entries,
    bundle_entry,
    bundle_json,
    bundle_keys,
    entry_head,
    entry_template,
    filled,
    pack,
    typical_reply,
    unpack,
)
from baton.schemas.decision import DECISION_FIELDS, Decision, Fallback, Outcome, Phase

if TYPE_CHECKING:
    from baton.processors.state import RunState

__all__ = [
    "REPLY_COLUMNS",
    "WRITE_COLUMNS",
    "old_row_decision",
    "pack",
    "recent_from_wire",
    "recent_keys",
    "recent_rows",
    "recent_to_wire",
    "replies_from_rows",
    "typical_reply",
    "unpack",
]

#: what this Decision writes: the frozen columns while they are its fields, else its own
WRITE_COLUMNS = None if DECISION_FIELDS == REPLY_COLUMNS else list(DECISION_FIELDS)
_DECISION_FIELD_SET = frozenset(DECISION_FIELDS)
#: a decision's fields as a tuple, in DECISION_FIELDS order (one C call, not 37 getattr)
_decision_row = attrgetter(*DECISION_FIELDS)


def recent_rows(state: RunState) -> Any:
    """``rec`` of the record (``[[key, rows], ...]`` as one ``orjson.Fragment``, or ``[]``
    when the run keeps none); replaces the linked decisions in ``state.recent`` with one
    bundle of every linked reply (processors/state_bundle.py; each linked slot holds it).

    Only linked decisions (``chain_hash`` set): the worker links a step's decisions after
    the engine has remembered them (processors/chain.py), so a decision without its link
    may still get it, and its bytes would miss it.
    """
    held = state.recent
    if not held:
        return []
    first = held[1]
    if type(first) is bytes and first[0] == BUNDLE:
        kept = _leads(held, first)
        appended = _appended(state, first, kept) if kept else None
        if appended is not None:
            return appended
    return _rebuilt(state, held)


def _leads(held: tuple[Any, ...], packed: bytes) -> int:
    """How many of the first kept replies the bundle holds (its newest ones, in order: the
    run drops its oldest replies first), 0 when it holds another one too (a reply replaced
    since, or dropped out of order)."""
    n = packed[1]
    kept = 1
    while kept < n and 2 * kept + 1 < len(held) and held[2 * kept + 1] is packed:
        kept += 1
    return kept if packed not in held[2 * kept + 1 :: 2] else 0


def _appended(state: RunState, packed: bytes, kept: int) -> Any:
    """``rec`` when the replies kept since the bundle was packed are linked decisions after
    the ``kept`` newest of it (a run's usual write: its new step's replies, its oldest
    dropped past RECENT_REPLIES): the bundle's kept entries with them appended, and
    ``state.recent`` holding that; None when another case (a reply not linked yet, a
    decoded record's rows) needs the whole rebuild."""
    held = state.recent
    templates, ids = [], []
    for i in range(2 * kept, len(held), 2):
        reply = held[i + 1]
        if type(reply) is Decision:
            if reply.chain_hash is None:
                return None
            rows = [_decision_row(reply)]
        elif type(reply) is list and None not in [d.chain_hash for d in reply]:
            rows = [_decision_row(d) for d in reply]
        else:
            return None
        template, owned = entry_template(held[i], rows)
        templates.append(template)
        ids.append(owned)
    made = bundle_appended(packed, kept, held[0], templates, ids)
    if made is None:
        return None
    new, json = made
    if new is not packed or len(held) // 2 != kept or type(held[0]) is not int:
        count = len(held) // 2
        # every kept reply is an entry of the new bundle: the slots name their entries
        # (small ints, held by the interpreter), not the keys, whose text it holds
        state.recent = tuple([x for i in range(count) for x in (i, new)])
    return orjson.Fragment(json)


def _rebuilt(state: RunState, held: tuple[Any, ...]) -> Any:
    """``rec`` of any kept replies, their linked ones packed in a new bundle."""
    parts: list[bytes] = []
    linked: list[int] = []
    templates: list[bytes] = []
    ids: list[bytes] = []
    for i in range(1, len(held), 2):
        key, kept = held[i - 1], held[i]
        if type(kept) is bytes:
            if kept[0] == BUNDLE:
                template, owned = bundle_entry(kept, key)
            else:  # its rows' JSON as a decoded record held them (or packed alone)
                template, owned = entry_template(key, orjson.loads(unpack(kept)))
            part = filled(template, owned)
            linked.append(i)
            templates.append(template)
            ids.append(owned)
        else:
            decisions = [kept] if type(kept) is Decision else kept
            rows = [_decision_row(d) for d in decisions]
            if None not in [d.chain_hash for d in decisions]:
                template, owned = entry_template(key, rows)
                part = filled(template, owned)
                linked.append(i)
                templates.append(template)
                ids.append(owned)
            else:  # written with the record, kept as it is
                part = orjson.dumps([key, rows])
        parts.append(part)
    if linked:
        packed = bundle(templates, ids)
        recent = list(held)
        for entry, i in enumerate(linked):
            recent[i - 1] = entry  # the entry's place in the bundle: it holds the key's text
            recent[i] = packed
        state.recent = tuple(recent)
    return orjson.Fragment(b"".join((b"[", b",".join(parts), b"]")))


def recent_to_wire(recent: tuple[Any, ...]) -> list[Any]:
    """``rec`` as plain values (lists, strings, numbers): the same for a reply held as a
    ``Decision``, as its rows' bytes, packed alone or in a bundle."""
    out = []
    for i, key in enumerate(recent_keys(recent)):
        kept = recent[2 * i + 1]
        if type(kept) is not bytes:
            decisions = [kept] if type(kept) is Decision else kept
            kept = orjson.dumps([_decision_row(d) for d in decisions])
        out.append([key, orjson.loads(held_rows(kept, key))])
    return out


def recent_keys(recent: tuple[Any, ...]) -> list[Any]:
    """The keys of ``RunState.recent``, oldest first: a slot holding its entry's place in
    the bundle that follows it (once written) is read from the bundle."""
    keys = list(recent[::2])
    opened: dict[int, list[Any]] = {}  # a bundle's keys, read once a call
    for i, key in enumerate(keys):
        held = recent[2 * i + 1]
        # (a record's own int key is held with its rows' JSON, never with a bundle)
        if type(key) is int and type(held) is bytes and held[0] == BUNDLE:
            texts = opened.get(id(held))
            if texts is None:
                texts = opened[id(held)] = bundle_keys(held)
            keys[i] = texts[key]
    return keys


def replies_from_rows(raw: bytes, key: str = "") -> list[Decision]:
    """The decisions of a reply held as its rows' bytes, packed or not, or of ``key`` in a
    bundle (in Decision's field order)."""
    plan = _HELD_COLUMNS
    return [plan.decision(row) for row in orjson.loads(held_rows(raw, key))]


def held_rows(held: bytes, key: str) -> bytes:
    """The rows' JSON of ``key``'s reply held as bytes: its rows, packed alone or not, or
    its entry of a bundle."""
    if held[0] != BUNDLE:
        return unpack(held)
    entry = filled(*bundle_entry(held, key))
    return entry[len(entry_head(key)) : -1]


#: the names tests and older callers use for the bundle's functions
_bundle = bundle
_bundle_entries = bundle_entries
_bundle_json = bundle_json


# ---------------------------------------------------------------- stored replies

_TIME_FIELDS = frozenset({"approval_expires_at", "event_time", "decided_at"})
# text -> member by dict lookup: calling the enum (Phase("approval")) is several times slower,
# and the worker restores a run's replies every time it reads the run from the changelog
_PHASES: dict[str, Phase] = {m.value: m for m in Phase}
_OUTCOMES: dict[str | None, Outcome | None] = {None: None, **{m.value: m for m in Outcome}}
_FALLBACKS: dict[str | None, Fallback | None] = {None: None, **{m.value: m for m in Fallback}}
#: column -> text-to-value table for the enum columns
_ENUMS: dict[str, dict[Any, Any]] = {
    "phase": _PHASES,
    "outcome": _OUTCOMES,
    "shadow_outcome": _OUTCOMES,
    "fallback": _FALLBACKS,
}


class _Columns:
    """How to turn rows with the given column names into Decisions (one per column list)."""

    __slots__ = ("enums", "names", "positional", "times")

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

    def decision(self, row: list[Any]) -> Decision:
        if len(row) != len(self.names):
            raise ValueError(f"run state reply has {len(row)} values for {len(self.names)} columns")
        for i in self.times:
            if row[i] is not None:
                row[i] = datetime.fromisoformat(row[i])
        for i, table in self.enums:
            row[i] = table[row[i]]
        if self.positional:
            return Decision(*row)
        return Decision(**dict(zip(self.names, row, strict=True)))


_FROZEN_COLUMNS = _Columns(REPLY_COLUMNS)
#: the columns of a reply held as bytes in memory: this Decision's fields, in their order
_HELD_COLUMNS = _FROZEN_COLUMNS if WRITE_COLUMNS is None else _Columns(DECISION_FIELDS)
_CHAIN_HASH = DECISION_FIELDS.index("chain_hash")


_ROW_LENGTH = len(DECISION_FIELDS)


def _linked_rows(rows: list[Any]) -> bool:
    """True when every row is a full row with its chain link (held as bytes when read)."""
    for row in rows:
        if type(row) is not list or len(row) != _ROW_LENGTH or row[_CHAIN_HASH] is None:
            return False
    return True


#: a reader's column plans by column list (a state's own ``cols``): a few at most
_PLANS: dict[tuple[str, ...], _Columns] = {}
#: formats 1-3 wrote rows in the Decision field order of their day, which the first
#: columns of REPLY_COLUMNS are (fields were only ever appended): see old_row_decision


def _known_plans() -> None:
    _PLANS[REPLY_COLUMNS] = _FROZEN_COLUMNS
    _PLANS[DECISION_FIELDS] = _HELD_COLUMNS


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
    entries: list[Any], cols: list[str] | None, old: bool = False, checked: bool = False
) -> tuple[Any, ...]:
    """``RunState.recent`` from its rows; ``old``: formats 1-3, whose rows may be shorter
    (written by an older Decision: the missing trailing fields take their defaults);
    ``checked``: linked rows known to be decisions are held without building them again."""
    plan = _plan(cols)
    to_decision = old_row_decision if old else plan.decision
    hold = plan is _HELD_COLUMNS and not old
    recent: list[Any] = []
    for key, rows in entries:
        recent.append(key)
        if hold and _linked_rows(rows):
            # linked replies stay their rows' bytes, once each row proved a Decision
            # (a record that does not is unreadable now, not at a retry)
            raw = bytes(memoryview(orjson.dumps(rows)))
            if not checked:
                for r in rows:
                    to_decision(r)
            recent.append(raw)
        elif len(rows) == 1:
            recent.append(to_decision(rows[0]))
        else:
            recent.append([to_decision(r) for r in rows])
    return tuple(recent)


def old_row_decision(row: list[Any]) -> Decision:
    if len(row) < len(REPLY_COLUMNS):
        return _Columns(REPLY_COLUMNS[: len(row)]).decision(row)
    return _FROZEN_COLUMNS.decision(row)
