"""A written run's dedup keys held by their hashes, their text kept once in its reply bundle.

A long run's six dedup keys (``h:`` or ``c:`` + a request id) were ~570 bytes of text in
memory, held by ``fresh`` and ``recent`` and read only by ``key in fresh`` at every event.
Once the state is written (state_wire.encode), every key is text in the record's JSON and,
compressed, in the bundle of the run's linked replies (state_replies: its entries start
with their keys). From then on the run holds:

* ``keys_at``: that bundle, its lz4 JSON followed by the list of the keys' text
  (``[key, ...]``, the *section*: the keys of ``fresh`` then those only in ``recent``);
* ``fresh`` as ``(hashes, digests)``: each key's 64-bit ``hash()`` as 8 bytes, in order;
* ``recent`` as ``(hashes, bundle)``: every kept reply is in the bundle, in its order.

The run's next event thaws them into the usual tuples with each hash an ``int`` in its key's
place (``thawed_fresh``, ``thawed_recent``); its next write turns them back into text first
(``as_text``, one decompression the write makes anyway). The record's bytes are the same.

A hash is what ``key in fresh`` compares for those keys. Two different keys of one run with
the same hash are never compacted (``section``); a new key whose hash equals a remembered
one's (2**-64 a pair, Python's string hash is keyed per process) is taken for seen, and the
engine then answers it from what it finds: its request digest differs (the digest covers the
request id), so a handoff is refused (``request_id_reused``), a report counted once under
its own key; a key without a digest (an approval's answer) is answered from the kept reply
whose text matches the key, and no text matches, so ``reply_not_kept``. A collision can
refuse an event, never allow one or count a cost twice: a key that is remembered always has
its own hash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from baton.processors.state_replies import bundle_section

if TYPE_CHECKING:
    from baton.processors.state import RunState

__all__ = [
    "as_text",
    "compact",
    "find_hash",
    "is_packed",
    "section",
    "text_fresh",
    "text_recent",
    "thawed_fresh",
    "thawed_recent",
]

_HASH = 8  # bytes of a packed hash
#: the hash ``section`` tells a run's keys apart by (a test's stand-in for a collision)
_hash = hash


def _packed(hashes: list[int]) -> bytes:
    return b"".join([h.to_bytes(_HASH, "little", signed=True) for h in hashes])


def _unpacked(hashes: bytes) -> tuple[int, ...]:
    return tuple(
        [
            int.from_bytes(hashes[i : i + _HASH], "little", signed=True)
            for i in range(0, len(hashes), _HASH)
        ]
    )


def is_packed(held: Any) -> bool:
    """True for a ``fresh`` or ``recent`` held as ``(hashes, ...)`` (a key is never bytes:
    the engine's are text, a record's JSON values)."""
    return type(held) is tuple and len(held) == 2 and type(held[0]) is bytes


def find_hash(hashes: bytes, h: int) -> int:
    """Where hash ``h`` stands among packed ``hashes`` (its key's index), -1 when absent."""
    needle = h.to_bytes(_HASH, "little", signed=True)
    i = hashes.find(needle)
    while i > 0 and i % _HASH:
        i = hashes.find(needle, i + 1)
    return i // _HASH if i >= 0 else -1


def thawed_fresh(fresh: tuple[Any, ...]) -> tuple[Any, ...]:
    """A packed ``fresh`` as the usual tuple: each key's hash (an int) in its place."""
    return (*_unpacked(fresh[0]), fresh[1])


def thawed_recent(recent: tuple[Any, ...]) -> tuple[Any, ...]:
    """A packed ``recent`` as the usual flat tuple (hash, bundle, hash, bundle, ...)."""
    bundle = recent[1]
    out: list[Any] = []
    for h in _unpacked(recent[0]):
        out += (h, bundle)
    return tuple(out)


def _texts(keys_at: bytes) -> dict[int, str]:
    """Hash -> text of every key the bundle's section lists."""
    return {hash(t): t for t in orjson.loads(bundle_section(keys_at))}


def text_fresh(fresh: Any, keys_at: bytes) -> Any:
    """``fresh`` with its keys' text (as it was before the write that packed it)."""
    if not keys_at or (type(fresh) is not tuple and type(fresh) is not dict):
        return fresh
    texts = _texts(keys_at)
    if type(fresh) is dict:  # a thawed fresh past FRESH_TUPLE_MAX keys
        return {texts[k] if type(k) is int else k: d for k, d in fresh.items()}
    if is_packed(fresh):
        fresh = thawed_fresh(fresh)
    return (*[texts[k] if type(k) is int else k for k in fresh[:-1]], fresh[-1])


def text_recent(recent: tuple[Any, ...], keys_at: bytes) -> tuple[Any, ...]:
    """``recent`` with its keys' text."""
    if not keys_at or not recent:
        return recent
    texts = _texts(keys_at)
    if is_packed(recent):
        recent = thawed_recent(recent)
    out = list(recent)
    out[::2] = [texts[k] if type(k) is int else k for k in recent[::2]]
    return tuple(out)


def as_text(state: RunState) -> None:
    """The state's keys as text again (before a write, or a fold of ``fresh``)."""
    keys_at = state.keys_at
    if keys_at:
        state.fresh = text_fresh(state.fresh, keys_at)
        state.recent = text_recent(state.recent, keys_at)
        state.keys_at = b""


def section(state: RunState) -> list[str] | None:
    """The keys a write can hold by hash (``fresh``'s, then those only in ``recent``), or
    None when it holds them as text: a key that is not text, a ``fresh`` that is not a
    tuple of the engine's digests, two keys with one hash."""
    fresh = state.fresh
    if type(fresh) is tuple:
        if type(fresh[-1]) is not bytes:
            return None
        keys = list(fresh[:-1])
    elif fresh:
        return None
    else:
        keys = []
    recent = state.recent
    if not recent:
        return None
    keys += [k for k in recent[::2] if k not in keys]
    for k in keys:
        if type(k) is not str:
            return None
    if len({_hash(k) for k in keys}) != len(keys):
        return None
    return keys


def compact(state: RunState, keys: list[str], bundle: Any) -> None:
    """Hold ``state``'s keys by hash (its record just written with ``bundle``, whose section
    lists ``keys``) when every kept reply is in that bundle."""
    recent = state.recent
    n = len(recent) // 2
    if (
        type(bundle) is not bytes
        or bundle[0] != 1
        or bundle[1] != n
        or bundle_section(bundle) != orjson.dumps(keys)
    ):
        return
    for i in range(1, len(recent), 2):
        if recent[i] is not bundle:
            return
    state.recent = (_packed([hash(k) for k in recent[::2]]), bundle)
    fresh = state.fresh
    if type(fresh) is tuple:
        state.fresh = (_packed([hash(k) for k in fresh[:-1]]), fresh[-1])
    state.keys_at = bundle
