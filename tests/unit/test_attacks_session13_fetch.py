"""Session 13's attacks on the decompressed-batch bound (processors/fetch_bound.py) by a client
writing the topics the worker reads: batches aiokafka's codecs never see, crafted byte by byte.

- a snappy xerial block of negative length looped for ever (the worker's loop held, its
  memory growing ~100 MB a second): now ``batch_undecodable``;
- a batch of many empty zstd frames cost ~5 s of the loop a MB (each frame copied the rest
  of the batch): now fed in pieces, and over ``MAX_FRAMES`` frames is ``batch_undecodable``;
- a batch whose records do not read (garbage inside a valid compressed frame, a header key
  that is not UTF-8) raised out of every fetch of its partition: now one dead letter too.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import codec
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record import memory_records
from aiokafka.record._crecords import cutil
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition

from baton.processors import fetch_bound
from baton.processors.fetch_bound import (
    KIND_TOO_LARGE,
    KIND_UNDECODABLE,
    MAX_FRAMES,
    InflateRefused,
    RefusedBatch,
    snappy_bounded,
)

from .test_fetch_bound import BOUND, CODECS, _batch, installed  # noqa: F401  (the fixture)

pytestmark = pytest.mark.unit

#: the codecs whose data is a run of frames (snappy's xerial blocks are tested apart)
FRAMED = {name: CODECS[name] for name in ("gzip", "lz4", "zstd")}


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail a call that loops for ever (pure Python: the alarm interrupts it)."""

    def expired(*_: Any) -> None:
        raise TimeoutError("still decoding after 5 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _xerial(*blocks: bytes) -> bytes:
    return fetch_bound._XERIAL_HEADER + b"\0\0\0\1\0\0\0\1" + b"".join(blocks)


@pytest.mark.parametrize("length", [-4, -1, -(2**31)])
def test_a_xerial_block_of_negative_length_is_undecodable_not_a_loop(
    deadline: None, length: int
) -> None:
    with pytest.raises(InflateRefused) as refused:
        snappy_bounded(_xerial(struct.pack("!i", length), b"\0" * 8), BOUND)
    assert refused.value.kind == KIND_UNDECODABLE


def test_a_xerial_block_longer_than_the_data_is_undecodable(deadline: None) -> None:
    block = codec.snappy_encode(b"x" * 100, xerial_compatible=False)
    with pytest.raises(InflateRefused) as refused:
        snappy_bounded(_xerial(struct.pack("!i", len(block) + 50), block), BOUND)
    assert refused.value.kind == KIND_UNDECODABLE
    # the honest framing of the same block still decodes
    assert snappy_bounded(_xerial(struct.pack("!i", len(block)), block), BOUND) == b"x" * 100


def test_a_batch_of_a_quarter_million_empty_xerial_blocks_is_refused_at_once() -> None:
    # 1.25 MB: each block a view in a list (~70 MB traced) and ~0.3 s of the loop a MB
    empty = codec.snappy_encode(b"", xerial_compatible=False)
    data = _xerial(*[struct.pack("!i", len(empty)) + empty] * 250_000)
    started = time.process_time()
    tracemalloc.start()
    try:
        with pytest.raises(InflateRefused, match="xerial blocks") as refused:
            snappy_bounded(data, BOUND)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.kind == KIND_UNDECODABLE
    assert time.process_time() - started < 0.5 and peak < 4 * 1024 * 1024, peak


def test_xerial_blocks_of_32_kb_up_to_the_bound_still_decode() -> None:
    data = bytes(range(256)) * (BOUND // 256)  # aiokafka writes 32 KB xerial blocks
    assert snappy_bounded(codec.snappy_encode(data), BOUND) == data


@pytest.mark.parametrize("name", FRAMED)
def test_a_batch_of_a_hundred_thousand_empty_frames_is_refused_at_once(name: str) -> None:
    encode, bounded = FRAMED[name]
    data = encode(b"") * 100_000  # ~1-2 MB on the wire, nothing inside
    started = time.process_time()
    with pytest.raises(InflateRefused, match=f"over {MAX_FRAMES} frames") as refused:
        bounded(data, BOUND)
    spent = time.process_time() - started
    assert refused.value.kind == KIND_UNDECODABLE
    assert spent < 0.5, f"{spent:.2f} s of CPU refusing it (the worker's loop waits)"


@pytest.mark.parametrize("name", FRAMED)
def test_as_many_frames_as_allowed_still_decode(name: str) -> None:
    encode, bounded = FRAMED[name]
    assert bounded(encode(b"ab") * MAX_FRAMES, BOUND) == b"ab" * MAX_FRAMES


@pytest.mark.parametrize("name", FRAMED)
def test_frames_larger_than_a_feed_decode_and_keep_the_bound_exact(name: str) -> None:
    encode, bounded = FRAMED[name]
    data = os.urandom(BOUND // 2)  # incompressible: each frame is several feeds long
    assert bounded(encode(data) + b"\0" * 7 + encode(data), BOUND) == data * 2
    assert bounded(encode(data) + encode(data[:-1] + b"x"), BOUND)[-1:] == b"x"
    with pytest.raises(InflateRefused) as refused:
        bounded(encode(data) + encode(data + b"!"), BOUND)
    assert refused.value.kind == KIND_TOO_LARGE


@pytest.mark.parametrize("name", FRAMED)
def test_junk_after_a_frame_is_undecodable(name: str) -> None:
    encode, bounded = FRAMED[name]
    with pytest.raises(InflateRefused) as refused:
        bounded(encode(b"event") + b"\x01junk", BOUND)
    assert refused.value.kind == KIND_UNDECODABLE


# ---------------------------------------------------------------------- records that do not read
def _rebuilt(batch: bytes, attributes: int, records: bytes) -> bytes:
    """``batch``'s header (its offsets, count) over ``records``, with a valid CRC: what a
    client that writes its own batches sends."""
    body = bytearray(batch[:61]) + records
    struct.pack_into(">h", body, 21, attributes)
    struct.pack_into(">i", body, 8, len(body) - 12)
    struct.pack_into(">I", body, 17, cutil.crc32c_cython(bytes(body[21:])))
    return bytes(body)


def _non_utf8_header_key(base: int) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=2**31 - 1,
    )
    builder.append(0, timestamp=1000, key=b"run", value=b"{}", headers=[("kk", b"h")])
    raw = bytearray(builder.build())
    raw[0:8] = base.to_bytes(8, "big")
    at = raw.index(b"kk")
    raw[at : at + 2] = b"\xff\xfe"
    return _rebuilt(bytes(raw), 0, bytes(raw[61:]))


@pytest.fixture(params=["c", "python"])
def records_class(request: pytest.FixtureRequest) -> Any:
    """aiokafka's C record reader, and the pure-Python one (AIOKAFKA_NO_EXTENSIONS)."""
    if request.param == "c":
        return memory_records.MemoryRecords
    return memory_records._MemoryRecordsPy


def _fetched(records_class: Any, topic: str, data: bytes) -> tuple[list[Any], int]:
    records = fetcher.PartitionRecords(
        TopicPartition(topic, 2), records_class(data), [], 0, None, None, True, 0
    )
    return list(records), records.next_fetch_offset


UNREADABLE = {
    # a valid gzip frame of bytes that are no records
    "garbage": lambda: _rebuilt(
        _batch(0, [b"a", b"b"], base=4), 1, codec.gzip_encode(b"\xff" * 64)
    ),
    # a gzip frame of nothing where two records are announced
    "empty": lambda: _rebuilt(_batch(0, [b"a", b"b"], base=4), 1, codec.gzip_encode(b"")),
    # a header key that is not UTF-8 (aiokafka's C reader: UnicodeDecodeError)
    "header key": lambda: _non_utf8_header_key(4),
}


@pytest.mark.parametrize("name", UNREADABLE)
def test_a_batch_whose_records_do_not_read_is_one_dead_letter_and_the_next_batch_reads(
    installed: None,  # noqa: F811
    records_class: Any,
    name: str,
) -> None:
    bad = UNREADABLE[name]()
    last = int.from_bytes(bad[:8], "big") + struct.unpack_from(">i", bad, 23)[0]
    got, next_offset = _fetched(records_class, "src", bad + _batch(0, [b"good"], base=last + 1))
    refused = got[0].value
    assert type(refused) is RefusedBatch and refused.kind == KIND_UNDECODABLE
    assert f"offsets 4-{last} of src[2] refused" in refused.reason, refused.reason
    assert [r.offset for r in got] == [last, last + 1]
    assert got[1].value == b"good" and next_offset == last + 2


def test_records_read_before_the_unreadable_one_stay_read(
    installed: None,  # noqa: F811
    records_class: Any,
) -> None:
    # a batch announcing 5 records holding 2: both read, then the batch ends where it says
    good = _batch(0, [b"a", b"b"], base=10)
    lying = bytearray(_rebuilt(good, 0, good[61:]))
    struct.pack_into(">i", lying, 57, 5)
    struct.pack_into(">I", lying, 17, cutil.crc32c_cython(bytes(lying[21:])))
    got, next_offset = _fetched(records_class, "src", bytes(lying) + _batch(0, [b"c"], base=12))
    assert [(r.offset, r.value) for r in got] == [(10, b"a"), (11, b"b"), (12, b"c")]
    assert next_offset == 13


def test_an_unreadable_batch_of_another_topic_still_raises(
    installed: None,  # noqa: F811
    records_class: Any,
) -> None:
    bad = UNREADABLE["garbage"]()
    with pytest.raises(CorruptRecordException):
        _fetched(records_class, "runs-changelog", bad)


# ---------------------------------------------------------------------- the legacy formats
def _legacy_message(magic: int, attributes: int, value: bytes, offset: int = 0) -> bytes:
    """One legacy message (magic 0 or 1), its CRC valid: with a codec in ``attributes`` its
    value is the compressed message set (the wrapper)."""
    timestamp = struct.pack(">q", 1000) if magic == 1 else b""
    body = struct.pack(">bb", magic, attributes) + timestamp + struct.pack(">i", -1)
    body += struct.pack(">i", len(value)) + value
    message = struct.pack(">I", zlib.crc32(body)) + body
    return struct.pack(">qi", offset, len(message)) + message


LEGACY = {
    # the decoder's refusal was raised at the first record, not at iter(): uncaught in 7c7d7ea
    "gzip bomb": lambda: _legacy_message(1, 1, codec.gzip_encode(bytes(2 * BOUND))),
    "not a message set": lambda: _legacy_message(1, 1, codec.gzip_encode(b"\xff" * 40)),
    "compressed twice": lambda: _legacy_message(
        1, 1, codec.gzip_encode(_legacy_message(1, 1, codec.gzip_encode(b"x" * 40)))
    ),
    "lz4 in magic 0": lambda: _legacy_message(0, 3, codec.lz4_encode(b"x")),
    # an honest one: refused too (no Kafka client since 0.11 writes the legacy formats)
    "honest gzip": lambda: _legacy_message(1, 1, codec.gzip_encode(_legacy_message(1, 0, b"x"))),
}


@pytest.mark.parametrize("name", LEGACY)
def test_a_compressed_legacy_batch_is_one_dead_letter_and_the_next_batch_reads(
    installed: None,  # noqa: F811
    records_class: Any,
    name: str,
) -> None:
    good = _legacy_message(1, 0, b"good", offset=1)  # uncompressed legacy still reads
    got, next_offset = _fetched(records_class, "src", LEGACY[name]() + good)
    refused = got[0].value
    assert type(refused) is RefusedBatch and refused.kind == KIND_UNDECODABLE, refused
    assert "of src[2] refused" in refused.reason
    assert [(r.offset, r.value) for r in got[1:]] == [(1, b"good")] and next_offset == 2


_FUZZ_LEGACY = """
import random, struct, sys, zlib
from aiokafka import codec
from aiokafka.record import memory_records
from baton.processors import fetch_bound
fetch_bound.install(1 << 20, ["src"])
def message(value):
    body = struct.pack(">bbqi", 1, 1, 1000, -1) + struct.pack(">i", len(value)) + value
    body = struct.pack(">I", zlib.crc32(body)) + body
    return struct.pack(">qi", 0, len(body)) + body
rnd = random.Random(7)
for _ in range(2000):
    inner = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 60)))
    batch = memory_records.MemoryRecords(message(codec.gzip_encode(inner))).next_batch()
    try:
        for record in batch:
            record.value
    except Exception:
        pass
print("read")
"""


def test_random_compressed_legacy_message_sets_do_not_crash_the_reader() -> None:
    # aiokafka 0.14's C reader walked the inflated set's lengths unchecked: SIGSEGV within
    # 2,000 such batches (in 4 of 4 seeds, measured), a crash of the whole worker
    done = subprocess.run(
        [sys.executable, "-c", _FUZZ_LEGACY], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "read" in done.stdout, (done.returncode, done.stderr[-500:])


# ---------------------------------------------------------------------- offsets past the batch
def _records_at(delta: int, value: bytes) -> bytes:
    """The records of a one-record batch whose record says offset delta ``delta`` (the batch
    header, the broker's, says one record: last offset delta 0)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=2**31 - 1,
    )
    builder.append(delta, timestamp=1000, key=b"run", value=value, headers=[])
    return bytes(builder.build()[61:])


@pytest.mark.parametrize("compressed", [False, True])
def test_a_record_past_its_batch_is_one_dead_letter_and_the_records_after_it_read(
    installed: None,  # noqa: F811
    records_class: Any,
    compressed: bool,
) -> None:
    # aiokafka yielded the record at offset 10 + 1000; the worker's loop (Faust's duplicate
    # filter) then took offsets 11 and 12 as read and dropped them, in silence, and the
    # group's offset moved to 1011
    records = _records_at(1000, b"evil")
    evil = _rebuilt(
        _batch(0, [b"x"], base=10),
        1 if compressed else 0,
        codec.gzip_encode(records) if compressed else records,
    )
    honest = _batch(0, [b"honest1"], base=11) + _batch(0, [b"honest2"], base=12)
    got, next_offset = _fetched(records_class, "src", evil + honest)
    assert [r.offset for r in got] == [10, 11, 12] and next_offset == 13
    refused = got[0].value
    assert type(refused) is RefusedBatch and refused.kind == KIND_UNDECODABLE
    assert "offset 1010, past the batch's last offset 10" in refused.reason, refused.reason
    assert [r.value for r in got[1:]] == [b"honest1", b"honest2"]


def test_a_record_past_its_batch_on_another_topic_raises(
    installed: None,  # noqa: F811
    records_class: Any,
) -> None:
    evil = _rebuilt(_batch(0, [b"x"], base=10), 0, _records_at(1000, b"evil"))
    with pytest.raises(InflateRefused, match="offset 1010, past"):
        _fetched(records_class, "runs-changelog", evil)
