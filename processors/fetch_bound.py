"""A bound on the bytes a record batch the worker's Kafka consumer (aiokafka) fetched inflates to.

aiokafka bounds the *compressed* bytes of a fetch only: a 1 MB lz4 batch of zeros inflates
to 250 MB, and four of them took a worker to 1.1 GB of memory before Baton's 64 KB event
limit saw a byte (docs/security.md, "Compressed records"). Under a memory limit that is an
OOM kill mid-fetch, and the same records read again at the restart: a crash loop caused by
any client that can send events.

:func:`install` (the worker, at start) replaces the codec functions aiokafka's record
batches call (the globals of ``aiokafka.record._crecords.default_records`` and
``legacy_records``, C, and of their pure-Python twins) by bounded ones: gzip and zstd stop
decompressing at the bound (``max_length``), lz4 too (``lz4.frame``, a Baton dependency),
snappy checks each block's declared length before decompressing it. A batch that would
inflate past ``BATON_MAX_DECOMPRESSED_BATCH_BYTES``, or does not decompress at all, is
*refused*: aiokafka's ``PartitionRecords`` (its ``MemoryRecords`` wrapped) then yields, in
place of the batch's records, one record at the batch's last offset whose value is a
:class:`RefusedBatch`; the batch step turns it into one dead letter naming the offsets, the
partition and why (processors/batch_routing.py), the group's offset moves past the batch
like past any record, and the worker goes on deciding. No record of such a batch is
decided (fail closed: its events get no allow). A batch whose records do not read (garbage
in a valid frame, a header key that is not UTF-8: aiokafka raised out of every fetch of the
partition), a record whose offset is past its batch's last (the worker took every offset below
it as read), a batch whose header ends it before it starts (the position went back to it for
ever), a compressed legacy (magic 0, 1) message set, and more frames or xerial blocks
than a client writes are refused the same way. A refused batch on any
other topic (the runs changelog, written by workers without compression) raises
:class:`InflateRefused` naming it: the worker stops, bounded, instead of applying something
it cannot read.
"""

from __future__ import annotations

import importlib
import re
import struct
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import cramjam  # aiokafka's codec library, a Baton dependency
import lz4.frame  # a Baton dependency

try:  # a Baton dependency on Python < 3.14; the standard library's after
    from backports.zstd import ZstdDecompressor, ZstdError
except ImportError:  # pragma: no cover - Python 3.14
    from compression.zstd import ZstdDecompressor, ZstdError  # type: ignore

from baton.schemas.settings import (
    DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES,
    MIN_MAX_DECOMPRESSED_BATCH_BYTES,
)

__all__ = [
    "DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES",
    "KIND_TOO_LARGE",
    "KIND_UNDECODABLE",
    "MAX_FRAMES",
    "MIN_MAX_DECOMPRESSED_BATCH_BYTES",
    "InflateRefused",
    "RefusedBatch",
    "bounded_decoders",
    "gzip_bounded",
    "install",
    "lz4_bounded",
    "snappy_bounded",
    "zstd_bounded",
]

#: dead-letter kinds (``error_kind``) of a refused batch's one dead letter
KIND_TOO_LARGE = "batch_too_large"
KIND_UNDECODABLE = "batch_undecodable"

_SETTING = "BATON_MAX_DECOMPRESSED_BATCH_BYTES"
#: the codec functions aiokafka's record modules call, by the names they import them as
_RECORD_MODULES = (
    "aiokafka.record._crecords.default_records",
    "aiokafka.record._crecords.legacy_records",
    "aiokafka.record.default_records",
    "aiokafka.record.legacy_records",
)


class InflateRefused(Exception):
    """A compressed batch not decompressed: past the bound (``KIND_TOO_LARGE``) or not
    valid data of its codec (``KIND_UNDECODABLE``)."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


class RefusedBatch(bytes):
    """The value of the one record standing for a refused batch (empty bytes carrying why).

    No client can send one: a Kafka record's value arrives as plain ``bytes``, so the batch
    step tells it by its type (``type(value) is RefusedBatch``)."""

    kind: str
    reason: str

    def __new__(cls, kind: str, reason: str) -> RefusedBatch:
        value = super().__new__(cls, b"")
        value.kind = kind
        value.reason = reason
        return value


# ---------------------------------------------------------------------- bounded decoders
def _too_large(codec: str, bound: int) -> InflateRefused:
    return InflateRefused(
        KIND_TOO_LARGE,
        f"{codec} data inflating past {bound} bytes ({_SETTING})",
    )


def _undecodable(codec: str, exc: Exception) -> InflateRefused:
    return InflateRefused(KIND_UNDECODABLE, f"not valid {codec} data: {str(exc)[:200]}")


#: input fed to a frame's decompressor at a time: what is left over past a frame's end
#: (``unused_data``, a copy) is at most this, not the rest of the batch (a batch of 100,000
#: empty zstd frames copied ~50 GB and held the worker's loop 5 s a MB)
_FEED = 64 * 1024
_ZEROS = re.compile(rb"\0*")
#: frames (members) a batch may hold: a Kafka client writes one; each costs a decompressor
#: (zstd ~9 us), and a 1 MB batch of empty zstd frames held the worker's loop ~1 s
MAX_FRAMES = 1024


def _frames(
    codec: str, data: Any, bound: int, new: Callable[[], Any], errors: tuple[type[Exception], ...]
) -> bytes:
    """Concatenated frames (gzip members, zstd frames) of ``data``, inflated to ``bound``
    bytes at most (one byte more proves there is more); zero padding between them skipped,
    as gzip's reader does."""
    out: list[bytes] = []
    size = 0
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    end = len(view)
    pos = 0 if end and view[0] else _ZEROS.match(view).end()
    frames = 0
    try:
        while pos < end:
            frames += 1
            if frames > MAX_FRAMES:
                raise InflateRefused(
                    KIND_UNDECODABLE, f"not valid {codec} data: over {MAX_FRAMES} frames"
                )
            d = new()
            while True:
                piece = view[pos : pos + _FEED]
                chunk = d.decompress(piece, bound - size + 1)
                size += len(chunk)
                if size > bound:
                    raise _too_large(codec, bound)
                out.append(chunk)
                if d.eof:
                    pos += len(piece) - len(d.unused_data or b"")
                    break
                pos += len(piece)  # every byte taken in (short of the bound, nothing held)
                if pos >= end:
                    raise InflateRefused(KIND_UNDECODABLE, f"not valid {codec} data: truncated")
            if pos < end and not view[pos]:  # zero padding before the next frame
                pos = _ZEROS.match(view, pos).end()
    except errors as exc:
        raise _undecodable(codec, exc) from None
    return b"".join(out)


def gzip_bounded(data: Any, bound: int) -> bytes:
    """gzip (every member) inflated to ``bound`` bytes at most, else ``InflateRefused``."""
    return _frames(
        "gzip", data, bound, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), (zlib.error,)
    )


def lz4_bounded(data: Any, bound: int) -> bytes:
    """Kafka's lz4 (frames) inflated to ``bound`` bytes at most, else ``InflateRefused``."""
    return _frames("lz4", data, bound, lz4.frame.LZ4FrameDecompressor, (RuntimeError,))


def zstd_bounded(data: Any, bound: int) -> bytes:
    """zstd (every frame) inflated to ``bound`` bytes at most, else ``InflateRefused``."""
    return _frames("zstd", data, bound, ZstdDecompressor, (ZstdError,))


#: the xerial framing some Java clients write snappy in (aiokafka.codec's check)
_XERIAL_HEADER = b"\x82SNAPPY\x00"


def snappy_bounded(data: Any, bound: int) -> bytes:
    """snappy, raw or xerial-framed: each block's declared length is checked before it is
    decompressed (snappy allocates what a block declares), else ``InflateRefused``."""
    raw = memoryview(data).cast("B")  # blocks as views: no copy of the input
    try:
        blocks, size = [], 0
        if len(raw) > 16 and raw[:8] == _XERIAL_HEADER:
            pos = 16
            # xerial writes 32 KB blocks: 1.25 MB of empty ones held ~70 MB and ~0.3 s a MB
            most = max(MAX_FRAMES, bound // 1024)
            while pos < len(raw):
                (length,) = struct.unpack_from("!i", raw, pos)
                if not 0 <= length <= len(raw) - pos - 4:  # a negative one looped for ever
                    raise ValueError(f"a block of {length} bytes at byte {pos} of {len(raw)}")
                block = raw[pos + 4 : pos + 4 + length]
                size += cramjam.snappy.decompress_raw_len(block)
                if size > bound:
                    raise _too_large("snappy", bound)
                if len(blocks) == most:
                    raise ValueError(f"over {most} xerial blocks")
                blocks.append(block)
                pos += 4 + length
        else:
            blocks = [raw]
            if cramjam.snappy.decompress_raw_len(raw) > bound:
                raise _too_large("snappy", bound)
        return b"".join(bytes(cramjam.snappy.decompress_raw(block)) for block in blocks)
    except (cramjam.DecompressionError, struct.error, ValueError) as exc:
        raise _undecodable("snappy", exc) from None


def _legacy_refused(data: Any) -> bytes:
    """A compressed legacy message set (magic 0, 1) is not read: aiokafka's C reader walks
    the inflated messages' lengths unchecked (``_read_last_offset``): random bytes there
    crashed the process (SIGSEGV, measured); no Kafka client since 0.11 writes one."""
    raise InflateRefused(
        KIND_UNDECODABLE, "a compressed message set of the legacy formats (magic 0, 1): not read"
    )


def bounded_decoders(bound: int) -> dict[str, Callable[[Any], bytes]]:
    """aiokafka's codec names -> decoders refusing data that inflates past ``bound``."""
    return {
        "gzip_decode": lambda data: gzip_bounded(data, bound),
        "lz4_decode": lambda data: lz4_bounded(data, bound),
        "zstd_decode": lambda data: zstd_bounded(data, bound),
        "snappy_decode": lambda data: snappy_bounded(data, bound),
    }


# ---------------------------------------------------------------------- aiokafka's fetch path
class _RefusedRecord:
    """What aiokafka's ``PartitionRecords`` reads of a record, for a refused batch."""

    __slots__ = ("headers", "offset", "timestamp", "timestamp_type", "value")
    key = None
    checksum = None

    def __init__(self, offset: int, timestamp: int | None, kind: int, value: bytes) -> None:
        self.offset = offset
        self.timestamp = timestamp
        self.timestamp_type = kind
        self.value = value
        self.headers: list[Any] = []


class _Partition:
    __slots__ = ("partition", "source", "topic")

    def __init__(self, topic: str, partition: int, source: bool) -> None:
        self.topic = topic
        self.partition = partition
        self.source = source


class _BoundedRecords:
    """aiokafka's ``MemoryRecords`` of one partition's fetch, the batch last handed out kept."""

    __slots__ = ("_records", "current", "end")

    def __init__(self, records: Any) -> None:
        self._records = records
        self.current: Any = None
        #: the offset after the current batch's last (its header's): no record of it is past
        self.end = 0

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        self.current = None  # a header that does not parse names no batch
        batch = self.current = self._records.next_batch()
        self.end = batch.next_offset if batch is not None else 0
        base = getattr(batch, "base_offset", None)  # (a legacy batch has none)
        if base is not None and self.end <= base:
            raise _BackwardBatch(base, self.end)
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)


#: what reading a batch's records raises when they are not what their header says (aiokafka's
#: CorruptRecordException, a KafkaError); its C reader raises UnicodeDecodeError (a
#: ValueError) at a header key that is not UTF-8, both readers AssertionError at a legacy
#: message compressed twice -- any client can write one, and the partition's fetch then
#: raised at every try: the worker stopped and read it again
_UNREADABLE: tuple[type[Exception], ...] = (ValueError, IndexError, AssertionError, struct.error)


class _PastTheBatch(Exception):
    """A record whose offset is past its batch's last (its offset delta is the client's):
    aiokafka yielded it, Faust took its offset as read and dropped every record below it on
    the partition as already read -- silently, up to ~2**31 offsets, committed."""

    def __init__(self, offset: int, end: int) -> None:
        super().__init__(f"a record at offset {offset}, past the batch's last offset {end - 1}")


class _BackwardBatch(Exception):
    """A batch whose header ends it before its first offset (a negative last offset delta,
    the client's: Tansu stores it as sent): aiokafka moved the position back to its "end"
    and fetched the partition again and again -- every later record unread, no dead letter."""

    def __init__(self, base: int, end: int) -> None:
        super().__init__(
            f"its header's last offset delta is {end - base - 1}: the batch ends before it starts"
        )


def _last_offset(batch: Any) -> int:
    """The offset a refused batch's one record takes: its header's last, never before its
    first (a position moved back reads the same batch for ever)."""
    last = batch.next_offset - 1
    return max(last, getattr(batch, "base_offset", last))


def _refused_record(
    where: _Partition, batch: Any, unread: int, exc: Exception
) -> tuple[_RefusedRecord, InflateRefused]:
    """The one record standing for ``batch``'s records from offset ``unread`` on."""
    last = _last_offset(batch)
    first = getattr(batch, "base_offset", last)
    if isinstance(exc, InflateRefused):
        kind, why = exc.kind, str(exc)
    elif isinstance(exc, (_PastTheBatch, _BackwardBatch)):
        kind, why = KIND_UNDECODABLE, str(exc)
    else:
        kind, why = KIND_UNDECODABLE, f"records that do not read: {str(exc)[:200]}"
    which = "none of its records" if unread <= first else f"none of its records from {unread} on"
    reason = (
        f"record batch at offsets {first}-{last} of {where.topic}[{where.partition}] "
        f"refused, {which} decided: {why}"
    )
    timestamp = getattr(batch, "max_timestamp", -1)
    record = _RefusedRecord(
        last,
        timestamp if isinstance(timestamp, int) and timestamp >= 0 else None,
        getattr(batch, "timestamp_type", 0) or 0,
        RefusedBatch(kind, reason),
    )
    return record, InflateRefused(kind, reason)


def install(bound: int, source_topics: Iterable[str]) -> None:
    """Bound every record batch this process's aiokafka consumers decompress to ``bound``
    bytes; a refused batch of ``source_topics`` becomes one record a dead letter is made
    of, one of any other topic an error. Idempotent (the last call's bound and topics)."""
    from aiokafka import errors
    from aiokafka.consumer import fetcher  # the worker's only (schemas/settings.py imports us)

    if bound < MIN_MAX_DECOMPRESSED_BATCH_BYTES:
        raise ValueError(
            f"{_SETTING}: expected at least {MIN_MAX_DECOMPRESSED_BATCH_BYTES}, got {bound}"
        )
    decoders = bounded_decoders(bound)
    for name in _RECORD_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # aiokafka without its C extensions reads with the Python ones
            continue
        # the legacy formats (magic 0, 1) have no zstd; a name missing elsewhere means an
        # aiokafka that decodes otherwise: refuse to start rather than run unbounded
        wanted = [c for c in decoders if not (c == "zstd_decode" and "legacy" in name)]
        missing = [c for c in wanted if c not in vars(module)]
        if missing:
            raise RuntimeError(
                f"{name} has no {', '.join(missing)}: this aiokafka decodes record batches "
                f"otherwise, and {_SETTING} cannot bound them (processors/fetch_bound.py)"
            )
        for codec in wanted:
            setattr(module, codec, _legacy_refused if "legacy" in name else decoders[codec])
    sources = frozenset(source_topics)
    refusals = (InflateRefused, _PastTheBatch, _BackwardBatch, errors.KafkaError, *_UNREADABLE)
    base = getattr(fetcher.PartitionRecords, "_baton_unbounded", fetcher.PartitionRecords)

    class BoundedPartitionRecords(base):  # type: ignore[misc, valid-type]
        """A refused or unreadable batch read as one record standing for it (a source
        topic's) or an error naming it (another topic's); the batches after it still read."""

        _baton_unbounded = base

        def __init__(self, tp: Any, records: Any, *args: Any) -> None:
            self._baton_where = _Partition(tp.topic, tp.partition, tp.topic in sources)
            self._baton_records = _BoundedRecords(records)
            super().__init__(tp, self._baton_records, *args)

        def __next__(self) -> Any:
            try:  # aiokafka's __next__, with the refusals
                record = next(self._records_iterator)
                end = self._baton_records.end
                if record.offset < end:
                    return record
                # (aiokafka set it past the record)
                self.next_fetch_offset = _last_offset(self._baton_records.current)
                raise _PastTheBatch(record.offset, end)
            except StopIteration:
                self._records_iterator = None
                raise
            except refusals as exc:
                batch = self._baton_records.current
                if batch is None:
                    raise
                where = self._baton_where
                record, refused = _refused_record(where, batch, self.next_fetch_offset, exc)
                if not where.source:
                    if isinstance(exc, (InflateRefused, _PastTheBatch, _BackwardBatch)):
                        raise refused from None
                    raise
                # aiokafka's generator ended with the error: the batches after this one
                self._records_iterator = self._unpack_records()
                if record.offset < self.next_fetch_offset:  # a header lying about its end
                    return self.__next__()
                self.next_fetch_offset = record.offset + 1
                return self._consumer_record(self._tp, record)

    fetcher.PartitionRecords = BoundedPartitionRecords
