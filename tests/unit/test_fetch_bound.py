"""processors/fetch_bound.py: the bounded decoders, and aiokafka's fetch path with them
(a refused batch becomes one record at its last offset; the batch step dead-letters it)."""

from __future__ import annotations

import importlib
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokafka import codec
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from baton.processors import fetch_bound
from baton.processors.batch_records import InputRecord, Outputs, RecordError
from baton.processors.batch_routing import route
from baton.processors.fetch_bound import (
    KIND_TOO_LARGE,
    KIND_UNDECODABLE,
    InflateRefused,
    RefusedBatch,
    gzip_bounded,
    lz4_bounded,
    snappy_bounded,
    zstd_bounded,
)
from baton.schemas.settings import Settings

pytestmark = pytest.mark.unit

BOUND = 1024 * 1024

CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[Any, int], bytes]]] = {
    "gzip": (codec.gzip_encode, gzip_bounded),
    "lz4": (codec.lz4_encode, lz4_bounded),
    "zstd": (codec.zstd_encode, zstd_bounded),
    "snappy-xerial": (codec.snappy_encode, snappy_bounded),
    "snappy-raw": (lambda d: codec.snappy_encode(d, xerial_compatible=False), snappy_bounded),
}


@pytest.mark.parametrize("name", CODECS)
def test_a_batch_within_the_bound_decodes_as_aiokafka_decodes_it(name: str) -> None:
    encode, bounded = CODECS[name]
    data = b"".join(b'{"event": %d, "run_id": "r"}' % i for i in range(20_000))[:BOUND]
    assert bounded(memoryview(encode(data)), BOUND) == data


def _bomb(name: str) -> bytes:
    """128 MB of zeros in ``name``, made of 4 MB pieces (frames, members, xerial blocks) so
    that making it costs little memory; raw snappy: a block declaring 128 MB."""
    encode, _ = CODECS[name]
    if name == "snappy-raw":
        return bytes([0x80, 0x80, 0x80, 0x40]) + b"\x00" * 64  # varint 2**27, then junk
    piece = encode(bytes(4 * 1024 * 1024))
    if name == "snappy-xerial":
        return piece[:16] + piece[16:] * 32
    return piece * 32


@pytest.mark.parametrize("name", CODECS)
def test_a_bomb_is_refused_at_the_bound_without_inflating(name: str) -> None:
    _, bounded = CODECS[name]
    bomb = _bomb(name)
    tracemalloc.start()
    try:
        with pytest.raises(InflateRefused) as refused:
            bounded(memoryview(bomb), BOUND)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.kind == KIND_TOO_LARGE
    assert "BATON_MAX_DECOMPRESSED_BATCH_BYTES" in str(refused.value)
    assert peak < len(bomb) + 4 * BOUND, f"{peak} bytes allocated refusing a 128 MB bomb"


def test_unbounded_the_same_bomb_allocates_it_whole() -> None:
    """The measure above sees aiokafka's own decoder inflate it (so it would see ours)."""
    bomb = _bomb("gzip")
    tracemalloc.start()
    try:
        codec.gzip_decode(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak > 128 * 1024 * 1024


@pytest.mark.parametrize("name", CODECS)
def test_one_byte_past_the_bound_is_refused_and_the_bound_itself_is_not(name: str) -> None:
    encode, bounded = CODECS[name]
    assert len(bounded(encode(bytes(BOUND)), BOUND)) == BOUND
    with pytest.raises(InflateRefused):
        bounded(encode(bytes(BOUND + 1)), BOUND)


@pytest.mark.parametrize("name", CODECS)
def test_data_that_does_not_decompress_is_refused_as_undecodable(name: str) -> None:
    _, bounded = CODECS[name]
    with pytest.raises(InflateRefused) as refused:
        bounded(b"\x82SNAPPY\x00" + b"not compressed at all" * 3, BOUND)
    assert refused.value.kind == KIND_UNDECODABLE


@pytest.mark.parametrize("name", ["gzip", "lz4", "zstd"])
def test_a_truncated_frame_is_refused_as_undecodable(name: str) -> None:
    encode, bounded = CODECS[name]
    with pytest.raises(InflateRefused) as refused:
        bounded(encode(b"xyz" * 5000)[:-6], BOUND)
    assert refused.value.kind == KIND_UNDECODABLE


def test_concatenated_gzip_members_and_zstd_frames_decode_whole() -> None:
    assert gzip_bounded(codec.gzip_encode(b"a" * 10) + codec.gzip_encode(b"b" * 5), BOUND) == (
        b"a" * 10 + b"b" * 5
    )
    assert zstd_bounded(codec.zstd_encode(b"a" * 10) + codec.zstd_encode(b"b" * 5), BOUND) == (
        b"a" * 10 + b"b" * 5
    )
    # the bound is on the sum of the members, not each
    two = codec.gzip_encode(bytes(BOUND // 2 + 1)) * 2
    with pytest.raises(InflateRefused):
        gzip_bounded(two, BOUND)


# ---------------------------------------------------------------------- aiokafka's fetch path
@pytest.fixture
def installed() -> Iterator[None]:
    """fetch_bound installed for topic "src", aiokafka as it was afterwards."""
    modules = [importlib.import_module(n) for n in fetch_bound._RECORD_MODULES]
    saved = [dict(vars(m)) for m in modules]
    records = fetcher.PartitionRecords
    fetch_bound.install(BOUND, ["src"])
    try:
        yield
    finally:
        fetcher.PartitionRecords = records
        for module, names in zip(modules, saved, strict=True):
            for name in ("gzip_decode", "lz4_decode", "zstd_decode", "snappy_decode"):
                if name in names:
                    setattr(module, name, names[name])


def _batch(compression: int, values: list[bytes], base: int) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=2**31 - 1,
    )
    for i, value in enumerate(values):
        builder.append(i, timestamp=1000 + i, key=b"run", value=value, headers=[])
    raw = bytearray(builder.build())
    raw[0:8] = base.to_bytes(8, "big")  # the broker's base offset
    return bytes(raw)


def _fetched(topic: str, data: bytes) -> tuple[list[Any], int]:
    records = fetcher.PartitionRecords(
        TopicPartition(topic, 3), MemoryRecords(data), [], 0, None, None, True, 0
    )
    return list(records), records.next_fetch_offset


#: the batch header's codec numbers (Kafka's)
GZIP, LZ4 = 1, 3


def test_a_refused_batch_is_one_record_at_its_last_offset_and_the_next_batch_is_read(
    installed: None,
) -> None:
    bomb = _batch(LZ4, [bytes(4 * BOUND), b"x", b"y"], base=10)
    got, next_offset = _fetched("src", bomb + _batch(GZIP, [b"good1", b"good2"], base=13))
    assert [r.offset for r in got] == [12, 13, 14]
    refused = got[0].value
    assert type(refused) is RefusedBatch and refused == b"" and got[0].key is None
    assert refused.kind == KIND_TOO_LARGE
    assert "offsets 10-12 of src[3]" in refused.reason
    assert [r.value for r in got[1:]] == [b"good1", b"good2"]
    assert next_offset == 15


def test_batches_within_the_bound_are_read_unchanged(installed: None) -> None:
    values = [b'{"n": %d}' % i for i in range(500)]
    data = _batch(LZ4, values[:250], base=0) + _batch(GZIP, values[250:], base=250)
    got, next_offset = _fetched("src", data)
    assert [r.value for r in got] == values and type(got[0].value) is bytes
    assert [r.offset for r in got] == list(range(500)) and next_offset == 500


def test_a_refused_batch_of_another_topic_raises_naming_it(installed: None) -> None:
    with pytest.raises(InflateRefused, match=r"offsets 0-0 of runs-changelog\[3\]"):
        _fetched("runs-changelog", _batch(GZIP, [bytes(2 * BOUND)], base=0))


def test_the_batch_step_dead_letters_a_refused_batch_with_its_kind_and_reason() -> None:
    value = RefusedBatch(KIND_TOO_LARGE, "record batch at offsets 10-12 of src[3] refused")
    rec = InputRecord("src", 3, 12, None, value)
    with pytest.raises(RecordError) as error:
        route(rec, 4, None, Outputs())
    assert error.value.kind == KIND_TOO_LARGE and "offsets 10-12" in str(error.value)


def test_a_client_sending_empty_bytes_is_not_a_refused_batch() -> None:
    with pytest.raises(Exception) as error:
        route(InputRecord("src", 3, 1, b"run", b""), 4, None, Outputs())
    assert getattr(error.value, "kind", None) not in (KIND_TOO_LARGE, KIND_UNDECODABLE)


def test_the_setting_defaults_to_8_mib_and_refuses_less_than_one_event() -> None:
    assert Settings().max_decompressed_batch_bytes == 8 * 1024 * 1024
    with pytest.raises(Exception, match="max_decompressed_batch_bytes"):
        Settings(max_decompressed_batch_bytes=64 * 1024)
    with pytest.raises(ValueError, match="BATON_MAX_DECOMPRESSED_BATCH_BYTES"):
        fetch_bound.install(1000, ["src"])


def test_an_aiokafka_that_decodes_otherwise_stops_the_worker_rather_than_run_unbounded(
    installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiokafka.record._crecords import default_records

    monkeypatch.delattr(default_records, "lz4_decode")
    with pytest.raises(RuntimeError, match="has no lz4_decode"):
        fetch_bound.install(BOUND, ["src"])
