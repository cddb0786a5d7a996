"""A run's stored replies on the changelog: decisions as rows of named columns, and back.

A run keeps its newest decisions (``RunState.recent``) to answer a retry or a redelivery
with the same decision. On the changelog (format 4, processors/state_wire.py) they are rows
whose columns are ``REPLY_COLUMNS`` (Decision's fields when format 4 was made, frozen), or
the state's own ``cols`` when this Decision has other fields. In memory a run's linked
replies are held as one bundle of their rows' bytes once the state is written (``_bundle``:
lz4 with a dictionary of typical rows; a short run's two decisions ~400 bytes against ~530
packed one by one, ~920 as JSON and ~2.2 KB as ``Decision`` objects), appended to at each
write and turned back into decisions only when a retry or redelivery needs them. In a
worker with a spill (processors/state_spill.py) the bundle's JSON is in the spill file
instead, unpacked, and the state holds its head and place (``SpilledBundle``). Formats
1-3 wrote rows in the Decision field order of their day, a prefix of REPLY_COLUMNS
(``old_row_decision``).

Not guaranteed: that a packed reply is smaller than its JSON (a reply of random text is
not); it never leaves the process (the changelog holds the JSON), so its form can change
with any release.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

import lz4.block
import orjson

from baton.processors import state_spill
from baton.processors.state_rows import (
    HELD_COLUMNS,
    REPLY_COLUMNS,
    WRITE_COLUMNS,
    old_row_decision,
    recent_from_wire,
)
from baton.schemas.decision import DECISION_FIELDS, Decision

if TYPE_CHECKING:
    from baton.processors.state import RunState

__all__ = [
    "REPLY_COLUMNS",
    "WRITE_COLUMNS",
    "old_row_decision",
    "pack",
    "recent_from_wire",
    "recent_rows",
    "recent_to_wire",
    "replies_from_rows",
    "typical_reply",
    "unpack",
]

#: a decision's fields as a tuple, in DECISION_FIELDS order (one C call, not 37 getattr);
#: compiled, ``_native_row`` instead (the attrgetter reads a native Decision's fields each
#: through its descriptor)
_decision_row: Final = attrgetter(*DECISION_FIELDS)
#: this module is compiled (BATON_COMPILE=1): a Decision is a native class
_COMPILED: Final = not __file__.endswith(".py")


def _native_row(d: Decision) -> tuple[Any, ...]:
    """``_decision_row(d)`` read as native fields (compiled: ~6x fewer instructions than the
    attrgetter's 37 descriptor calls). tests/unit/test_state_reply_row.py holds the two
    equal, field for field, in DECISION_FIELDS order."""
    return (
        d.decision_id, d.request_id, d.run_id, d.tenant, d.phase, d.outcome, d.reason, d.owner,
        d.from_agent, d.to_agent, d.task_id, d.parent_task_id, d.action, d.depth,
        d.handoff_count, d.spent_usd, d.tool_calls, d.handoff_status, d.fallback,
        d.approval_id, d.approval_expires_at, d.approver, d.policy_version, d.event_time,
        d.decided_at, d.worker, d.partition, d.offset, d.shadow_outcome, d.tool,
        d.reserved_usd, d.detail, d.request_digest, d.chain_prev, d.chain_hash, d.input,
        d.reemitted,
    )  # fmt: skip


def _rows_of(reply: Any) -> list[Any]:
    """A kept reply's rows in DECISION_FIELDS order: one Decision's, or each of a list's
    (compiled read as native fields, interpreted through the attrgetter)."""
    if type(reply) is Decision:
        return [_native_row(reply) if _COMPILED else _decision_row(reply)]
    return [_native_row(d) if _COMPILED else _decision_row(d) for d in reply]


#: lz4's two calls as Final names: a compiled build read ``lz4`` through this module's dict
#: at each call (three a write)
_compress: Final = lz4.block.compress
_decompress: Final = lz4.block.decompress
#: the worker's spill (processors/state_spill.py): a written bundle's JSON out of the heap
_spill_put: Final = state_spill.put
_spill_read: Final = state_spill.read
_Spilled: Final = state_spill.SpilledBundle


def recent_rows(state: RunState) -> Any:
    """``rec`` of the record (``[[key, rows], ...]`` as one ``orjson.Fragment``, or ``[]``
    when the run keeps none); replaces the linked decisions in ``state.recent`` with one
    bundle of every linked reply's rows, packed (each linked slot holds it).

    Only linked decisions (``chain_hash`` set): the worker links a step's decisions after
    the engine has remembered them (processors/chain.py), so a decision without its link
    may still get it, and its bytes would miss it.
    """
    held = state.recent
    if not held:
        return []
    first = held[1]
    if isinstance(first, bytes) and first[0] == _BUNDLE:  # packed, or spilled
        kept = _leads(held, first)
        appended = _appended(state, first, kept) if kept else None
        if appended is not None:
            return appended
    return _rebuilt(state, held)


def _leads(held: tuple[Any, ...], bundle: bytes) -> int:
    """How many of the first kept replies the bundle holds (its newest ones, in order: the
    run drops its oldest replies first), 0 when it holds another one too (a reply replaced
    since, or dropped out of order)."""
    n = bundle[1]
    kept = 1
    while kept < n and 2 * kept + 1 < len(held) and held[2 * kept + 1] is bundle:
        kept += 1
    return kept if bundle not in held[2 * kept + 1 :: 2] else 0


def _appended(state: RunState, bundle: bytes, kept: int) -> Any:
    """``rec`` when the replies kept since the bundle was packed are linked decisions after
    the ``kept`` newest of it (a run's usual write: its new step's replies, its oldest
    dropped past RECENT_REPLIES): the bundle's kept entries with them appended, and
    ``state.recent`` holding that; None when another case (a reply not linked yet, a
    decoded record's rows) needs the whole rebuild."""
    held = state.recent
    n = bundle[1]
    parts = []
    for i in range(2 * kept, len(held), 2):
        reply = held[i + 1]
        if type(reply) is Decision:
            if reply.chain_hash is None:
                return None
        elif type(reply) is not list or None in [d.chain_hash for d in reply]:
            return None
        parts.append(orjson.dumps([held[i], _rows_of(reply)]))
    json = _bundle_json(bundle)
    if not parts and kept == n:  # nothing new since it was packed
        return orjson.Fragment(json)
    dropped = n - kept
    if dropped:  # past its entries' lengths and commas, after the "["
        lengths = bundle[2 : 2 + _LENGTH * n]
        skip = dropped + sum(
            int.from_bytes(lengths[j : j + _LENGTH], "big")
            for j in range(0, _LENGTH * dropped, _LENGTH)
        )
        # its first kept entry must be the run's oldest kept key: the newest entry replaced
        # (a key remembered again) looks like the oldest dropped until the keys are compared
        if not json.startswith(_entry_head(held[0]), 1 + skip):
            return None
        json = b"[" + json[1 + skip :]
    if parts:
        json = b"".join((json[:-1], b",", b",".join(parts), b"]"))
    lengths = b"".join([len(p).to_bytes(_LENGTH, "big") for p in parts])
    old = bundle[2 + _LENGTH * dropped : 2 + _LENGTH * n]
    head = b"".join((bytes((_BUNDLE, kept + len(parts))), old, lengths))
    packed = _spill_put(head, json)
    if packed is None:  # no spill (or a full one): packed in memory
        plain = len(json) >= _PLAIN_FROM  # (inline: a call a write cost ~1.5k instructions)
        packed = head + _compress(json, store_size=True, dict=None if plain else _DICTIONARY)
    recent = list(held)
    recent[1::2] = [packed] * (len(held) // 2)
    state.recent = tuple(recent)
    return orjson.Fragment(json)


def _rebuilt(state: RunState, held: tuple[Any, ...]) -> Any:
    """``rec`` of any kept replies, their linked ones packed in a new bundle."""
    parts: list[bytes] = []
    linked: list[int] = []
    opened: dict[int, list[bytes]] = {}  # a bundle's entries, unpacked once a call
    for i in range(1, len(held), 2):
        key, kept = held[i - 1], held[i]
        if isinstance(kept, bytes):  # a SpilledBundle too
            if kept[0] == _BUNDLE:
                entries = opened.get(id(kept))
                if entries is None:
                    entries = opened[id(kept)] = _bundle_entries(kept)
                part = _entry_of(entries, key)
            else:  # its rows' JSON as a decoded record held them (or packed alone)
                part = b"".join((b"[", orjson.dumps(key), b",", unpack(kept), b"]"))
            linked.append(i)
        else:
            if type(kept) is Decision:
                is_linked = kept.chain_hash is not None
            else:
                is_linked = None not in [d.chain_hash for d in kept]
            part = orjson.dumps([key, _rows_of(kept)])
            if is_linked:  # else written with the record, kept as it is
                linked.append(i)
        parts.append(part)
    if linked:
        bundle = _bundle([parts[i // 2] for i in linked])
        recent = list(held)
        for i in linked:
            recent[i] = bundle
        state.recent = tuple(recent)
    return orjson.Fragment(b"".join((b"[", b",".join(parts), b"]")))


def recent_to_wire(recent: tuple[Any, ...]) -> list[Any]:
    """``rec`` as plain values (lists, strings, numbers): the same for a reply held as a
    ``Decision``, as its rows' bytes, packed alone or in a bundle."""
    out = []
    for i in range(0, len(recent), 2):
        kept = recent[i + 1]
        if not isinstance(kept, bytes):  # (a SpilledBundle is bytes)
            decisions = [kept] if type(kept) is Decision else kept
            kept = orjson.dumps([_decision_row(d) for d in decisions])
        out.append([recent[i], orjson.loads(held_rows(kept, recent[i]))])
    return out


def replies_from_rows(raw: bytes, key: str = "") -> list[Decision]:
    """The decisions of a reply held as its rows' bytes, packed or not, or of ``key`` in a
    bundle (in Decision's field order)."""
    plan = HELD_COLUMNS
    return [plan.decision(row) for row in orjson.loads(held_rows(raw, key))]


def held_rows(held: bytes, key: str) -> bytes:
    """The rows' JSON of ``key``'s reply held as bytes: its rows, packed alone or not, or
    its entry of a bundle."""
    if held[0] != _BUNDLE:
        return unpack(held)
    entry = _entry_of(_bundle_entries(held), key)
    return entry[len(_entry_head(key)) : -1]


# ---------------------------------------------------------------- packed in memory

#: the first byte of a packed reply (its rows' JSON starts with ``[``)
_PACKED: Final = 0
#: the first byte of a run's linked replies packed together (``_bundle``)
_BUNDLE: Final = 1


def typical_reply(phase: str, outcome: str, reason: str) -> list[Any]:
    """A stored reply row with the values most rows hold (ids are placeholders)."""
    typical: dict[str, Any] = {
        "decision_id": "0" * 32, "request_id": "req-1", "run_id": "run-1", "tenant": "default",
        "phase": phase, "outcome": outcome, "reason": reason, "owner": "agent",
        "from_agent": "agent", "to_agent": "agent", "task_id": "task-1", "depth": 1,
        "handoff_count": 1, "spent_usd": 0.0, "tool_calls": 0, "policy_version": "0" * 16,
        "event_time": "2026-01-01T00:00:00.000000+00:00",
        "decided_at": "2026-01-01T00:00:00.000000+00:00", "worker": "worker-1",
        "partition": 0, "offset": 0, "reserved_usd": 0.0, "chain_prev": "0" * 32,
        "chain_hash": "0" * 32, "reemitted": False,
    }  # fmt: skip
    return [typical.get(c) for c in REPLY_COLUMNS]


#: what reply rows repeat (columns' nulls, phases, outcomes, time formats): built from
#: literals here, never from traffic. Two rows: lz4 hashes its dictionary at every call, and
#: five rows (1.9 KB) packed no smaller. lz4 rather than deflate: a fourth of the CPU (~1 us
#: to pack a decision, ~0.4 us to unpack it at each write of the run) for ~270 bytes a
#: decision where deflate made ~180 (bench/RESULTS.md)
_DICTIONARY: Final = b"".join(
    orjson.dumps([typical_reply(*kind)])
    for kind in (("post_handoff", "recorded", "within_budget"), ("pre_handoff", "allow", "ok"))
)
_PACKED_HEAD: Final = bytes((_PACKED,))


def pack(raw: bytes) -> bytes:
    """A reply's rows (JSON) as a run keeps them in memory: ``_PACKED``, then lz4 (the
    length first). The run's id is left in (two of a row's columns name it, and most request
    ids): swapping it for a byte saved ~20 bytes a decision for ~0.3 us at each pack and
    unpack."""
    return _PACKED_HEAD + _compress(raw, store_size=True, dict=_DICTIONARY)


def unpack(held: bytes) -> bytes:
    """The rows' JSON of a reply held packed or not. Packed replies are made only by
    ``pack`` in this process, never read from the changelog (whose rows are JSON)."""
    if held[0] != _PACKED:
        return held
    return _decompress(memoryview(held)[1:], dict=_DICTIONARY)  # type: ignore[no-any-return]


#: a bundle: _BUNDLE, the number of entries, each entry's length (3 bytes), then the lz4
#: of ``[entry,entry,...]``, an entry being ``[key,rows]`` as the record writes it
_LENGTH: Final = 3


#: lz4's dictionary only for a bundle under this many bytes of JSON: with it, a long run's
#: (~3 KB) cost ~25k instructions more a write (python-lz4 resets and loads a 16 KB stream
#: at each call) to save ~90 bytes; a short run's keeps it (~200 bytes saved). The reader
#: picks it by the size lz4 stored, so no flag is needed
_PLAIN_FROM: Final = 2048


def _bundle(entries: list[bytes]) -> bytes:
    """A run's linked replies as one packed bytes: the second reply of a run repeats most of
    the first (run id, tenant, agents, times, the chain link it follows), which packing each
    alone cannot use; ~35 % smaller for a short run's two, one bytes object not two."""
    if len(entries) > 255:
        raise ValueError(f"a run keeps at most 255 replies in a bundle, got {len(entries)}")
    lengths = [len(entry).to_bytes(_LENGTH, "big") for entry in entries]
    head = bytes((_BUNDLE, len(entries))) + b"".join(lengths)
    json = b"[" + b",".join(entries) + b"]"
    spilled = _spill_put(head, json)
    if spilled is not None:
        return spilled
    plain = len(json) >= _PLAIN_FROM
    return head + _compress(json, store_size=True, dict=None if plain else _DICTIONARY)


def _bundle_json(bundle: bytes) -> bytes:
    """``[entry,entry,...]``: the record's ``rec`` when the bundle is all the run keeps."""
    if type(bundle) is _Spilled:
        return _spill_read(bundle)
    start = 2 + _LENGTH * bundle[1]
    size = int.from_bytes(bundle[start : start + 4], "little")
    kept = memoryview(bundle)[start:]
    if size >= _PLAIN_FROM:
        return _decompress(kept)  # type: ignore[no-any-return]
    return _decompress(kept, dict=_DICTIONARY)  # type: ignore[no-any-return]


def _bundle_entries(bundle: bytes) -> list[bytes]:
    """The entries of a bundle (``[key,rows]`` each)."""
    json = _bundle_json(bundle)
    entries = []
    at = 1  # past "["
    for i in range(bundle[1]):
        size = int.from_bytes(bundle[2 + _LENGTH * i : 2 + _LENGTH * (i + 1)], "big")
        entries.append(json[at : at + size])
        at += size + 1  # and the "," or "]"
    return entries


def _entry_head(key: str) -> bytes:
    return b"".join((b"[", orjson.dumps(key), b","))


def _entry_of(entries: list[bytes], key: str) -> bytes:
    """``key``'s entry of a bundle (a run's keys are distinct: one at most)."""
    head = _entry_head(key)
    for entry in entries:
        if entry.startswith(head):
            return entry
    raise ValueError(f"run state: reply {key[:80]!r} is not in its bundle of {len(entries)}")
