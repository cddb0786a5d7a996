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

from collections.abc import Sequence
from struct import Struct
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


#: struct formats of n packed hashes, the first few made once
_FORMATS = [Struct(f"<{n}q") for n in range(40)]


def _struct(n: int) -> Struct:
    return _FORMATS[n] if n < 40 else Struct(f"<{n}q")


def _packed(hashes: Sequence[int]) -> bytes:
    return _struct(len(hashes)).pack(*hashes)


def _unpacked(hashes: bytes) -> tuple[int, ...]:
    return _struct(len(hashes) // _HASH).unpack(hashes)  # type: ignore[no-any-return]


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
    hashes = _unpacked(recent[0])
    out = [recent[1]] * (2 * len(hashes))
    out[::2] = hashes
    return tuple(out)


def _texts(keys_at: bytes) -> dict[int, str]:
    """Hash -> text of every key the bundle's section lists."""
    texts = orjson.loads(bundle_section(keys_at))
    return dict(zip(map(hash, texts), texts, strict=True))


def text_fresh(fresh: Any, keys_at: bytes, texts: dict[int, str] | None = None) -> Any:
    """``fresh`` with its keys' text (as it was before the write that packed it)."""
    if not keys_at or (type(fresh) is not tuple and type(fresh) is not dict):
        return fresh
    if texts is None:
        texts = _texts(keys_at)
    if type(fresh) is dict:  # a thawed fresh past FRESH_TUPLE_MAX keys
        return {texts[k] if type(k) is int else k: d for k, d in fresh.items()}
    if is_packed(fresh):
        return (*map(texts.__getitem__, _unpacked(fresh[0])), fresh[1])
    keys = fresh[:-1]
    return (*map(texts.get, keys, keys), fresh[-1])  # (a text key is no int key of texts)


def text_recent(
    recent: tuple[Any, ...], keys_at: bytes, texts: dict[int, str] | None = None
) -> tuple[Any, ...]:
    """``recent`` with its keys' text."""
    if not keys_at or not recent:
        return recent
    if texts is None:
        texts = _texts(keys_at)
    if is_packed(recent):
        hashes = _unpacked(recent[0])
        out = [recent[1]] * (2 * len(hashes))
        out[::2] = map(texts.__getitem__, hashes)
        return tuple(out)
    held = list(recent)
    keys = recent[::2]
    held[::2] = map(texts.get, keys, keys)
    return tuple(held)


def as_text(state: RunState) -> None:
    """The state's keys as text again (before a write, or a fold of ``fresh``)."""
    keys_at = state.keys_at
    if keys_at:
        texts = _texts(keys_at)
        state.fresh = text_fresh(state.fresh, keys_at, texts)
        state.recent = text_recent(state.recent, keys_at, texts)
        state.keys_at = b""


def section(state: RunState) -> list[str] | None:
    """The keys a write can hold by hash (``fresh``'s, then those only in ``recent``), or
    None when it holds them as text: a key that is not text, a ``fresh`` that is not a
    tuple of the engine's digests, two keys with one hash."""
    fresh = state.fresh
    if type(fresh) is tuple:
        if type(fresh[-1]) is not bytes:
            return None
        keys: tuple[Any, ...] = fresh[:-1]
    elif fresh:
        return None
    else:
        keys = ()
    recent = state.recent
    if not recent:
        return None
    held = recent[::2]
    if keys != held:
        keys = tuple(dict.fromkeys(keys + held))  # fresh's, then recent's others, in order
    if {*map(type, keys)} != _TEXT:
        return None
    if len({*map(_hash, keys)}) != len(keys):
        return None
    return list(keys)


_TEXT = {str}


def compact(state: RunState, text: bytes, bundle: Any) -> None:
    """Hold ``state``'s keys by hash (its record just written with ``bundle``) when every
    kept reply is in that bundle and the bundle ends with ``text``, the JSON list of the
    keys ``section`` gave."""
    recent = state.recent
    n = len(recent) // 2
    if (
        type(bundle) is not bytes
        or bundle[0] != 1
        or bundle[1] != n
        or bundle_section(bundle) != text
    ):
        return
    for i in range(1, len(recent), 2):
        if recent[i] is not bundle:
            return
    held = recent[::2]
    hashes = _packed(list(map(hash, held)))
    state.recent = (hashes, bundle)
    fresh = state.fresh
    if type(fresh) is tuple:
        # one bytes for both when they hold the same keys (a run's first RECENT_REPLIES)
        same = fresh[:-1] == held
        state.fresh = (hashes if same else _packed(list(map(hash, fresh[:-1]))), fresh[-1])
    state.keys_at = bundle
