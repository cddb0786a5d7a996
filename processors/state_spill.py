"""A worker's decoded runs' kept replies out of its heap: their bundles in a spill file.

A decoded run holds its linked replies (``RunState.recent``) as one bundle
(processors/state_replies.py), read only when a request repeats (a client's retry, a
redelivery) and rewritten at every write of the run. With a spill configured (the worker
configures one, unless ``BATON_SPILL_REPLIES=0``), a written run's bundle JSON goes to an
append-only file of the worker process and its state keeps a ``SpilledBundle`` instead: the
bundle's head (its entry count and lengths) and where the JSON is (segment, offset,
length), ~80 bytes where a long run's packed bundle took ~1.1 KB (docs/performance.md). The
run's next write, a retry and the sweep's hold read it back with ``os.pread``: the file
lives in the page cache, which the process's RSS does not count (it is never mapped).
Packing the JSON (lz4) is no longer needed for what is spilled: a write costs a ``pwrite``
and a ``pread`` of the JSON instead of packing it again and unpacking it.

The file is a cache of what the changelog holds, never read by anyone else:
- its segments are unlinked temporary files (``O_TMPFILE``) in the worker's data directory,
  so the kernel frees them when the process ends, however it ends, and a new process starts
  with none (the table is restored from the changelog, as without a spill);
- a segment is written at its end, never changed, and closed once no bundle in it is held:
  a ``SpilledBundle`` counts itself out when it is freed (``__del__``), so a bundle stays
  readable exactly as long as some state holds it (a state put back after an over-budget
  batch too). A run's bundle leaves its segment at the run's next write, when the sweep
  holds it idle (``BATON_HOLD_IDLE_S``) or when the run leaves the table; nothing is copied
  (a copy of a handle is the handle; it does not pickle), and a spill configured again
  never reuses the id of a closed one's segment while a handle into it lives (it reads as
  lost);
- past ``max_bytes`` of open segments, or once a write failed (a full disk), bundles are
  packed in memory as without a spill.

Not guaranteed: that a bundle can be read back (a disk error, a file truncated under the
worker). A short or failed read calls the spill's ``lost`` hook: the worker's ends the
process committing nothing (processors/exits.py), and the restarted worker restores its
runs from the changelog, which holds every reply; nothing is ever answered from a guess.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final, NoReturn

__all__ = [
    "MAX_BYTES",
    "SEGMENT_BYTES",
    "ReplySpill",
    "SpillLostError",
    "SpilledBundle",
    "active",
    "configure",
    "disable",
    "put",
    "read",
]

#: a segment's size: a new one is opened when the next bundle would pass it
SEGMENT_BYTES: Final = 8 << 20
#: the open segments' bytes at most (garbage included); past it bundles stay in memory
#: (the worker's: BATON_SPILL_MAX_BYTES, the same default; ~3.5 KB a decoded long run)
MAX_BYTES: Final = 4 << 30
#: a handle's tail: segment, offset, length (its head is the bundle's: state_replies)
_TAIL: Final = struct.Struct(">HII")
_TAIL_SIZE: Final = _TAIL.size
_tail_of: Final = _TAIL.unpack_from
_pack_tail: Final = _TAIL.pack
_pread: Final = os.pread
_pwrite: Final = os.pwrite
_SEGMENT_IDS: Final = 1 << 16
#: free files kept to be written again
_FREE_FILES: Final = 2
#: the current segment's pending bytes are written once they reach this
_FLUSH_BYTES: Final = 64 << 10


class SpillLostError(RuntimeError):
    """A spilled bundle could not be read back: the worker cannot answer from its state."""


class SpilledBundle(bytes):
    """A run's reply bundle held in the spill file: the bundle's head (``_BUNDLE``, the
    entry count, each entry's length), then its segment, offset and length (``_TAIL``).
    Compared by identity like the packed bundle it replaces (a state's linked slots hold one
    object). Freed, it counts itself out of its segment."""

    __slots__ = ()

    # one object a bundle: a copy counted out of its segment too would close it under the
    # states still holding it (bytes' own copy goes through __reduce_ex__, a new object)
    def __copy__(self) -> SpilledBundle:
        return self

    def __deepcopy__(self, memo: object) -> SpilledBundle:
        return self

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("a spilled reply bundle does not pickle: write its state (to_bytes)")

    def __del__(self) -> None:
        if _closed and _release_closed(self):
            return
        spill = _spill
        if spill is not None:
            spill.release(self)


class ReplySpill:
    """One worker process's spill: its segments, the one written, and what each holds."""

    def __init__(
        self,
        directory: Path,
        segment_bytes: int = SEGMENT_BYTES,
        max_bytes: int = MAX_BYTES,
        lost: Callable[[str], NoReturn] | None = None,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.lost: Callable[[str], NoReturn] = lost or _raise_lost
        #: segment id -> [fd, bundles held, its file's length (the current one: and _end)]
        self.segments: dict[int, list[int]] = {}
        self._current = -1  # the segment written (-1: none yet)
        self._fd = -1
        self._end = 0
        #: files no bundle is in any more, (fd, length), kept to be written again: their
        #: pages are in the page cache, and writing over them costs about half of what a
        #: new file's pages do (allocated, then freed when it is closed)
        self._free: list[tuple[int, int]] = []
        #: the current segment's bytes from ``_flushed`` on, not written yet: one ``pwrite``
        #: of ~64 KB costs about a fifth of twenty of ~3 KB (a system call's fixed cost on
        #: this VM was ~4 us); a bundle in it is read from here
        self._pending = bytearray()
        self._flushed = 0
        #: segment -> (offset, bytes): a segment's last bytes that could not be written
        #: (a full disk), held here for the bundles in them
        self._stranded: dict[int, tuple[int, bytes]] = {}
        self.failed: OSError | None = None  # the write that failed: spilling stopped
        self.written = 0  # bundles written, for the bench
        directory.mkdir(parents=True, exist_ok=True)

    def put(self, head: bytes, json: bytes) -> SpilledBundle | None:
        """``json`` appended to the spill and its handle (``head`` then where it is); None
        when it stays in memory (the spill is full, or broke)."""
        if self.failed is not None:
            return None
        size = len(json)
        end = self._end
        if end + size > self.segment_bytes or self._fd < 0:
            if not self._roll():
                return None
            end = 0
        pending = self._pending
        pending += json
        self._end = end + size
        self.segments[self._current][1] += 1
        self.written += 1
        handle = SpilledBundle(head + _pack_tail(self._current, end, size))
        if len(pending) >= _FLUSH_BYTES:
            self._flush()
        return handle

    def _flush(self) -> bool:
        """Write the current segment's pending bytes; False (spilling stopped, the bytes
        kept in memory for the bundles in them) when the disk refused them."""
        pending = self._pending
        if not pending:
            return True
        self._pending = bytearray()
        try:
            written = _pwrite(self._fd, pending, self._flushed)
            if written != len(pending):
                raise OSError(f"a short write: {written} of {len(pending)} bytes")
        except OSError as exc:
            self._stranded[self._current] = (self._flushed, bytes(pending))
            self._broke(exc)
            return False
        self._flushed += written
        return True

    def read(self, handle: bytes) -> bytes:
        """The JSON a handle names, as written; the ``lost`` hook when it cannot be."""
        segment, offset, size = _tail_of(handle, len(handle) - _TAIL_SIZE)
        held = self.segments.get(segment)
        if held is None:
            self.lost(f"segment {segment} is closed or was never written")
        # stranded first: a failed write strands the current segment's bytes too, and
        # leaves its pending bytes empty
        if segment in self._stranded and offset >= self._stranded[segment][0]:
            start, kept = self._stranded[segment]
            json = kept[offset - start : offset - start + size]
        elif segment == self._current and offset >= self._flushed:
            at = offset - self._flushed
            json = bytes(memoryview(self._pending)[at : at + size])
        else:
            try:
                json = _pread(held[0], size, offset)
            except OSError as exc:
                self.lost(f"segment {segment}: {exc}")
        if len(json) != size or json[0] != 0x5B or json[-1] != 0x5D:  # [ ... ]
            self.lost(f"segment {segment} at {offset}: {len(json)} of {size} bytes, not a bundle")
        return json

    def release(self, handle: bytes) -> None:
        """A handle was freed: its segment holds one bundle less (closed when none)."""
        segment = _tail_of(handle, len(handle) - _TAIL_SIZE)[0]
        held = self.segments.get(segment)
        if held is None:  # another spill's (a spill configured again) or closed with it
            return
        held[1] -= 1
        if held[1] <= 0 and segment != self._current:
            self._retire(segment)

    @property
    def open_bytes(self) -> int:
        """The spill files' bytes (page cache, then disk): bundles held, and garbage."""
        total = sum(length for _fd, _held, length in self.segments.values())
        total += sum(length for _fd, length in self._free)
        if self._current >= 0:
            total += max(0, self._end - self.segments[self._current][2])
        return total

    def close(self) -> None:
        """Close every file (their handles cannot be read from now on)."""
        self.failed = self.failed or OSError("the spill was closed")  # nothing kept free
        for segment, (_fd, held, _length) in self.segments.items():
            if held > 0:  # handles still held: no later spill of this process reuses its id
                _closed[segment] = held
        for segment in list(self.segments):
            self._retire(segment)
        for fd, _length in self._free:
            _close_fd(fd)
        self._free = []

    def _roll(self) -> bool:
        """A segment to write: a free file, or a new one if the bound and the disk allow."""
        if self.failed is not None:
            return False
        if self._free:
            fd, length = self._free.pop()
        else:
            if self.open_bytes + self.segment_bytes > self.max_bytes:
                return False
            try:
                fd = _temporary_fd(self.directory)
            except OSError as exc:
                self._broke(exc)
                return False
            length = 0
        old = self._current
        if old >= 0:
            self._flush()
            held = self.segments[old]
            held[2] = max(held[2], self._end)
            self._current = -1
            if held[1] <= 0:
                self._retire(old)
        if self.failed is not None:  # the old segment's last bytes could not be written
            self._free.append((fd, length))
            return False
        segment = _next_segment(self.segments)
        self.segments[segment] = [fd, 0, length]
        self._current, self._fd, self._end, self._flushed = segment, fd, 0, 0
        return True

    def _broke(self, exc: OSError) -> None:
        """Writing failed: spill no more (the handles written so far stay readable)."""
        self.failed = exc

    def _retire(self, segment: int) -> None:
        """A segment no bundle is in: its file kept free to be written again (at most
        _FREE_FILES of them), else closed (the kernel frees its pages and blocks)."""
        fd, _held, length = self.segments.pop(segment)
        self._stranded.pop(segment, None)
        if segment == self._current:
            length = max(length, self._end)
            self._current, self._fd, self._end, self._flushed = -1, -1, 0, 0
            self._pending = bytearray()
        if self.failed is None and len(self._free) < _FREE_FILES:
            self._free.append((fd, length))
        else:
            _close_fd(fd)


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):  # (a close that fails has freed the fd)
        os.close(fd)


def _temporary_fd(directory: Path) -> int:
    """A file with no name in ``directory`` (freed by the kernel when closed)."""
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            return os.open(directory, flag | os.O_RDWR, 0o600)
        except OSError:  # a file system without O_TMPFILE: a named file, unlinked at once
            pass
    fd, name = tempfile.mkstemp(prefix="spill-", dir=directory)
    os.unlink(name)
    return fd


_last_segment = -1


def _next_segment(open_segments: dict[int, list[int]]) -> int:
    """A segment id unique in this process while its segment is open (16 bits, wrapping)."""
    global _last_segment
    segment = (_last_segment + 1) % _SEGMENT_IDS
    while segment in open_segments or segment in _closed:
        segment = (segment + 1) % _SEGMENT_IDS
    _last_segment = segment
    return segment


#: segment -> handles still held of a closed spill's segment (a spill configured again)
_closed: dict[int, int] = {}


def _release_closed(handle: bytes) -> bool:
    """A freed handle of a closed spill's segment counted out of it; False: not one."""
    segment = _tail_of(handle, len(handle) - _TAIL_SIZE)[0]
    held = _closed.get(segment)
    if held is None:
        return False
    if held <= 1:
        del _closed[segment]
    else:
        _closed[segment] = held - 1
    return True


def _raise_lost(why: str) -> NoReturn:
    raise SpillLostError(f"a spilled reply bundle cannot be read back: {why}")


#: the process's spill (None: bundles packed in memory, as in replay, tests and benches)
_spill: ReplySpill | None = None


def configure(
    directory: Path,
    segment_bytes: int = SEGMENT_BYTES,
    max_bytes: int = MAX_BYTES,
    lost: Callable[[str], NoReturn] | None = None,
) -> ReplySpill:
    """Spill the process's written bundles under ``directory`` from now on."""
    global _spill
    disable()
    _spill = ReplySpill(directory, segment_bytes, max_bytes, lost)
    return _spill


def disable() -> None:
    """Pack bundles in memory again; the spilled ones cannot be read back."""
    global _spill
    spill, _spill = _spill, None
    if spill is not None:
        spill.close()


def active() -> ReplySpill | None:
    return _spill


def put(head: bytes, json: bytes) -> bytes | None:
    """``json`` spilled with ``head`` (``SpilledBundle``), or None: pack it in memory."""
    spill = _spill
    if spill is None:
        return None
    return spill.put(head, json)


def read(handle: bytes) -> bytes:
    """The bundle JSON of a ``SpilledBundle``."""
    spill = _spill
    if spill is None:
        _raise_lost("the spill was disabled")
    return spill.read(handle)
