"""A run's kept replies packed in memory: one bytes object a run, the hex ids held apart.

Once a run's state is written its linked replies (``RunState.recent``) are held as one
*bundle*: the record's ``rec`` entries (``[key,rows]``) with every decision id and chain
link (32 lowercase hex digits) taken out as its 16 bytes, and the rest lz4-packed with a
dictionary of typical rows. lz4 cannot pack hex (no entropy coder: 32 literal bytes an id),
and a decision's id and its chain hash are random: with them apart a long run's six
replies are ~760 bytes instead of ~980, and a short run's two ~70 bytes fewer. The entries'
JSON comes back byte for byte: the packed text is a bytes %-template (``%`` doubled, a
``"%s"`` where an id stood), filled in one call with the ids' hex.

A value that is not the engine's (an id of other text, a mark of our own inside a client's
text) leaves its row's entry as it is (no ids taken out). The bundle never leaves the
process (the changelog holds the JSON), so its form can change with any release.
"""

from __future__ import annotations

import binascii
from struct import pack as _pack
from struct import unpack_from as _unpack_from
from typing import Any

import lz4.block
import orjson

from baton.schemas.decision import DECISION_FIELDS

__all__ = [
    "BUNDLE",
    "REPLY_COLUMNS",
    "bundle",
    "bundle_appended",
    "bundle_entries",
    "bundle_entry",
    "bundle_json",
    "bundle_keys",
    "entry_head",
    "entry_template",
    "filled",
    "pack",
    "typical_reply",
    "unpack",
]

#: the reply columns of a format-4 state without ``cols``: Decision's fields when format 4
#: was made, frozen (a new Decision field makes writers add ``cols``; add a format then)
REPLY_COLUMNS: tuple[str, ...] = (
    "decision_id", "request_id", "run_id", "tenant", "phase", "outcome", "reason", "owner",
    "from_agent", "to_agent", "task_id", "parent_task_id", "action", "depth",
    "handoff_count", "spent_usd", "tool_calls", "handoff_status", "fallback", "approval_id",
    "approval_expires_at", "approver", "policy_version", "event_time", "decided_at",
    "worker", "partition", "offset", "shadow_outcome", "tool", "reserved_usd", "detail",
    "request_digest", "chain_prev", "chain_hash", "input", "reemitted",
)  # fmt: skip

#: the first byte of a reply packed alone (its rows' JSON starts with ``[``)
_PACKED = 0
#: the first byte of a bundle
BUNDLE = 1
#: a bundle: BUNDLE, the number of entries, each entry's template length (4 bytes), then
#: how many ids each had taken out (1 byte each), every id's 16 bytes in order, then the
#: lz4 of the template ``[entry,entry,...]``
_TABLE = 5
_ID = 16
#: the columns whose 32-hex values are held as bytes (in DECISION_FIELDS order: the rows)
_STRIPPED = tuple(DECISION_FIELDS.index(c) for c in ("decision_id", "chain_prev", "chain_hash"))
#: what stands for an id while the entry is written: JSON of a string no id is
_MARK = "\x00"
_MARK_JSON = orjson.dumps(_MARK)
_SLOT = b'"%s"'
_from_hex = bytes.fromhex
_hexlify = binascii.hexlify


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


#: what reply rows repeat (columns' nulls, phases, outcomes, time formats), as templates
#: (ids as slots): built from literals here, never from traffic. lz4 rather than deflate: a
#: fourth of the CPU at each write of the run (bench/RESULTS.md)
_DICTIONARY = b"".join(
    orjson.dumps([typical_reply(*kind)])
    for kind in (("post_handoff", "recorded", "within_budget"), ("pre_handoff", "allow", "ok"))
).replace(b'"' + b"0" * 32 + b'"', _SLOT)
_PACKED_HEAD = bytes((_PACKED,))


def pack(raw: bytes) -> bytes:
    """A reply's rows (JSON) packed alone: ``_PACKED``, then lz4 (the length first)."""
    return _PACKED_HEAD + lz4.block.compress(raw, store_size=True, dict=_DICTIONARY)


def unpack(held: bytes) -> bytes:
    """The rows' JSON of a reply held packed alone or not (a decoded record's rows)."""
    if held[0] != _PACKED:
        return held
    return lz4.block.decompress(memoryview(held)[1:], dict=_DICTIONARY)  # type: ignore[no-any-return]


def entry_template(key: str, rows: list[Any]) -> tuple[bytes, bytes]:
    """``key``'s entry ``[key,rows]`` as a template (``%`` doubled, a slot for each id taken
    out) and those ids' bytes; rows in DECISION_FIELDS order (tuples or lists). An entry
    whose text holds the mark itself, or with more than 255 ids, keeps its ids in the text."""
    ids = []
    out = []
    for row in rows:
        row = list(row)
        for i in _STRIPPED:
            value = row[i]
            if type(value) is str and len(value) == 32:
                try:
                    raw = _from_hex(value)
                except ValueError:
                    continue
                if raw.hex() == value:  # fromhex also takes capitals and spaces
                    row[i] = _MARK
                    ids.append(raw)
        out.append(row)
    if ids:
        json = orjson.dumps([key, out])
        if len(ids) <= 255 and json.count(_MARK_JSON) == len(ids):
            return json.replace(b"%", b"%%").replace(_MARK_JSON, _SLOT), b"".join(ids)
    return orjson.dumps([key, rows]).replace(b"%", b"%%"), b""


def filled(template: bytes, ids: bytes | memoryview) -> bytes:
    """The JSON a template stands for: its slots filled with the ids' hex, in order."""
    if not ids:
        return template % ()
    return template % tuple(_hexlify(ids, b" ", _ID).split())


def bundle(entries: list[bytes], ids: list[bytes] | None = None) -> bytes:
    """A run's entries as one bundle: templates with their ids (``entry_template``), or
    with ``ids`` None the entries' plain JSON."""
    if ids is None:
        entries = [e.replace(b"%", b"%%") for e in entries]
        ids = [b""] * len(entries)
    return _packed(entries, ids, b"[" + b",".join(entries) + b"]")


def _packed(templates: list[bytes], ids: list[bytes], body: bytes) -> bytes:
    if len(templates) > 255:
        raise ValueError(f"a run keeps at most 255 replies in a bundle, got {len(templates)}")
    counts = bytes([len(i) // _ID for i in ids])
    head = bytes((BUNDLE, len(templates))) + _lengths(templates) + counts + b"".join(ids)
    return head + lz4.block.compress(body, store_size=True, dict=_DICTIONARY)


def _lengths(templates: list[bytes] | tuple[int, ...]) -> bytes:
    """Each entry's template length, 4 bytes (``templates`` or their lengths)."""
    sizes = [len(t) for t in templates] if templates and type(templates[0]) is bytes else templates
    return _pack(f">{len(sizes)}I", *sizes)


def _opened(held: bytes) -> tuple[tuple[int, ...], bytes, memoryview, bytes]:
    """A bundle's template lengths, id counts, ids and template ``[entry,...]`` (the table
    read in one C call each: ``int.from_bytes`` an entry cost more than the lz4)."""
    n = held[1]
    lengths = _unpack_from(f">{n}I", held, 2)
    counts = held[2 + 4 * n : 2 + _TABLE * n]
    start = 2 + _TABLE * n
    end = start + _ID * sum(counts)
    view = memoryview(held)
    body = lz4.block.decompress(view[end:], dict=_DICTIONARY)
    return lengths, counts, view[start:end], body


def bundle_json(held: bytes) -> bytes:
    """``[entry,entry,...]``: the record's ``rec`` when the bundle is all the run keeps."""
    _lengths, _counts, ids, body = _opened(held)
    return filled(body, ids)


def _templates(held: bytes) -> tuple[list[bytes], list[memoryview]]:
    lengths, counts, ids, body = _opened(held)
    templates, owned = [], []
    at, first = 1, 0  # past "["
    for size, count in zip(lengths, counts, strict=True):
        templates.append(body[at : at + size])
        owned.append(ids[first : first + _ID * count])
        at += size + 1  # and the "," or "]"
        first += _ID * count
    return templates, owned


def bundle_entries(held: bytes) -> list[bytes]:
    """The entries of a bundle (``[key,rows]`` each, their JSON)."""
    templates, ids = _templates(held)
    return [filled(t, i) for t, i in zip(templates, ids, strict=True)]


def entry_head(key: str) -> bytes:
    return b"".join((b"[", orjson.dumps(key), b","))


def bundle_keys(held: bytes) -> list[Any]:
    """The keys of a bundle's entries, in order (for a retry, a redelivery, the wire map)."""
    return [orjson.loads(entry)[0] for entry in bundle_entries(held)]


def bundle_entry(held: bytes, key: str | int) -> tuple[bytes, bytes]:
    """``key``'s entry of a bundle (or its ``key``-th), as its template and ids (a run's
    keys are distinct)."""
    templates, ids = _templates(held)
    if type(key) is int:
        return templates[key], bytes(ids[key])
    head = entry_head(key).replace(b"%", b"%%")  # type: ignore[arg-type]
    for template, owned in zip(templates, ids, strict=True):
        if template.startswith(head):
            return template, bytes(owned)
    raise ValueError(f"run state: reply {key[:80]!r} is not in its bundle of {len(templates)}")


def bundle_appended(
    held: bytes, kept: int, oldest: str | int, templates: list[bytes], ids: list[bytes]
) -> tuple[bytes, bytes] | None:
    """The bundle holding ``held``'s ``kept`` newest entries, then ``templates`` (with their
    ``ids``), and its JSON; None when its first kept entry is not ``oldest``'s (the run's
    oldest kept key, or its entry's place in ``held``: the newest entry replaced, a key
    remembered again, looks like the oldest dropped until the keys are compared): the
    caller rebuilds it."""
    n = held[1]
    lengths, counts, old_ids, body = _opened(held)
    dropped = n - kept
    if type(oldest) is int and oldest != dropped:
        return None
    if dropped:  # past its entries and commas, after the "["
        skip = dropped + sum(lengths[:dropped])
        if type(oldest) is str and not body.startswith(
            entry_head(oldest).replace(b"%", b"%%"), 1 + skip
        ):
            return None
        body = b"[" + body[1 + skip :]
        old_ids = old_ids[_ID * sum(counts[:dropped]) :]
    if not templates and not dropped:  # nothing new since it was packed
        return held, filled(body, old_ids)
    if templates:
        body = b"".join((body[:-1], b",", b",".join(templates), b"]"))
    every_id = bytes(old_ids) + b"".join(ids)
    sizes = (*lengths[dropped:], *[len(t) for t in templates])
    table = _lengths(sizes) + counts[dropped:] + bytes([len(i) // _ID for i in ids])
    count = kept + len(templates)
    if count > 255:
        raise ValueError(f"a run keeps at most 255 replies in a bundle, got {count}")
    head = bytes((BUNDLE, count)) + table + every_id
    packed = head + lz4.block.compress(body, store_size=True, dict=_DICTIONARY)
    return packed, filled(body, every_id)
