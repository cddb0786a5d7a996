"""A run held idle in the worker's memory: its changelog record compressed, and back.

The sweep holds a run no event touched for ``sweep.HOLD_IDLE_S`` as bytes until its next
event (processors/sweep_step.py). Held as the plain record a short run takes ~1.5 KB and a
long one ~3.9 KB; compressed with raw deflate (level 2) and a preset dictionary of what
every record repeats (the keys, the reply columns' nulls, outcomes, time formats) they take
a fourth of that (~370 B and ~880 B), for ~15 us to hold (with the encoding) and ~5 us to
inflate when the run returns (bench/memory_bench.py).

The held form never leaves the process: ``HELD_MARK``, a tag drawn when the process
starts (4 random bytes), the record's length (3 bytes) and the deflate stream, so the
dictionary can change with any release. A record read from the changelog is JSON, whose
first byte is never ``HELD_MARK``: one that claims to be held without this process's tag is
refused before anything is inflated (a writer of the changelog cannot plant a held record),
and a held record inflates only to the length it states, at most ``MAX_RECORD``, exactly.
So a held record was written by this process from a state it had read: its reply rows were
checked then, and are not checked again when it is read back (``state_wire.decode``).
Not guaranteed: that a held record is smaller than the plain one (a run of random text
is not); the sweep holds it either way.
"""

from __future__ import annotations

import secrets
import zlib
from typing import Final

import orjson

from baton.processors.state_replies import typical_reply as _typical_reply

__all__ = ["HELD_MARK", "MAX_RECORD", "hold", "is_held", "record_of", "record_size"]

#: the first byte of a held record (a JSON record starts with ``{`` or ``[``)
HELD_MARK: Final = 0
#: no state record may pass 900,000 bytes (settings.run_state_max_bytes); a held one stating
#: more is refused before anything is inflated
MAX_RECORD: Final = 1 << 20
#: the shortest record there is (``{}``): a held one stating less is refused uninflated
_MIN_RECORD: Final = 2
#: this process's held records, and only they, carry it
_TAG: Final = secrets.token_bytes(4)
_HEADER: Final = 8  # mark, tag, length
_WBITS: Final = (
    -12
)  # raw deflate (no zlib header or checksum: the record never leaves memory), 4 KB window


def _dictionary() -> bytes:
    """What format-4 records repeat, most common last (deflate codes near matches shortest)."""
    record = {
        "v": 4, "run": "run-1", "tn": "default", "t0": 1.0, "t": 1.0, "hc": 1, "usd": 0.0,
        "tc": 0, "stop": None, "fin": False, "tasks": [["task-1", "agent", "agent", None, 1]],
        "ag": ["agent"], "res": [], "pend": [], "keys": ["h:req-1", "c:req-1"], "mk": 2,
        "dg": ["0" * 16, "0" * 16],
        "rec": [
            ["h:req-1", [_typical_reply("pre_handoff", "stop", "handoff_budget_exceeded")]],
            ["h:req-1", [_typical_reply("pre_handoff", "approval_required", "approval_required")]],
            ["c:req-1", [_typical_reply("post_handoff", "recorded", "within_budget")]],
            ["h:req-1", [_typical_reply("pre_handoff", "allow", "ok")]],
        ],
        "ev": None, "ch": "0" * 32, "st": 0, "bn": [], "gr": [],
    }  # fmt: skip
    return orjson.dumps(record)


_ZDICT: Final = _dictionary()
#: primed with the dictionary once; each hold copies it (~20 KB: window and hash table)
#: rather than loading the dictionary again. Level 2 with a 2,048-entry hash table (memLevel
#: 4): the size level 1 with the default table gives, for ~40 % fewer instructions
_PACKER: Final = zlib.compressobj(2, zlib.DEFLATED, _WBITS, 4, zlib.Z_DEFAULT_STRATEGY, _ZDICT)


def hold(record: bytes) -> bytes:
    """The held form of a state's changelog record (``RunState.to_bytes()``); a record over
    MAX_RECORD (none the worker writes, see above) as a compact copy of itself."""
    if len(record) > MAX_RECORD:
        return bytes(memoryview(record))  # orjson's result keeps its whole growth buffer
    packer = _PACKER.copy()
    return _header(len(record)) + packer.compress(record) + packer.flush()


def _header(size: int) -> bytes:
    return bytes((HELD_MARK, *_TAG, *size.to_bytes(3, "big")))


def is_held(raw: bytes) -> bool:
    return len(raw) > 0 and raw[0] == HELD_MARK


def record_size(raw: bytes) -> int:
    """The length of the record ``raw`` is, held or not (no inflating). Only this process's
    held records are taken at their word: a planted one (another tag, refused when read)
    counts its own bytes, so it cannot fill the state budget with lengths it claims."""
    if is_held(raw) and raw[1:5] == _TAG and len(raw) >= _HEADER:
        return int.from_bytes(raw[5:_HEADER], "big")
    return len(raw)


def record_of(raw: bytes) -> bytes:
    """The changelog record of ``raw``: itself, or the record it holds (inflated, checked)."""
    if not is_held(raw):
        return raw
    if raw[1:5] != _TAG:
        raise ValueError(
            f"run state of {len(raw)} bytes starts with byte {HELD_MARK} but was not held by "
            "this process: expected a JSON record"
        )
    size = record_size(raw)
    # ``decompress(data, 0)`` means no limit: a record stating 0 bytes is refused here
    if len(raw) < _HEADER or not _MIN_RECORD <= size <= MAX_RECORD:
        raise ValueError(
            f"held run state of {len(raw)} bytes states a record of {size} bytes: "
            f"expected an {_HEADER}-byte header and at least {_MIN_RECORD}, "
            f"at most {MAX_RECORD} bytes"
        )
    unpacker = zlib.decompressobj(_WBITS, _ZDICT)
    try:
        record = unpacker.decompress(raw[_HEADER:], size)
    except zlib.error as exc:
        raise ValueError(f"held run state of {len(raw)} bytes does not inflate: {exc}") from exc
    if len(record) != size or not unpacker.eof or unpacker.unconsumed_tail or unpacker.unused_data:
        raise ValueError(
            f"held run state of {len(raw)} bytes inflates to {len(record)}+ bytes, "
            f"not the {size} it states"
        )
    return record
