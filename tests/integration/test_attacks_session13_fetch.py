"""Session 13 (H5): batches a client crafts byte by byte on gov.handoff.requests, through a
real `baton worker` over Tansu (processors/fetch_bound.py).

Each batch is produced by aiokafka with its codec's encoder replaced, so the batch header,
its CRC and the broker's offsets are real and only the compressed payload is the attack:

- snappy, xerial-framed, a block of length -4: the bounded decoder looped for ever (the
  worker's loop held, its memory growing) -- the partition's next event was never decided;
- gzip of bytes that are no records, and gzip of records whose header key is not UTF-8:
  aiokafka's reader raised out of every fetch of the partition (the worker stopped).

Now each is one ``batch_undecodable`` dead letter naming its partition, and the next event
on the partition is decided.
"""

from __future__ import annotations

import asyncio
import importlib
import struct
from collections.abc import Callable, Iterator

import orjson
import pytest
from aiokafka import AIOKafkaProducer, codec
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from baton.processors import fetch_bound
from baton.streams.embedded import EmbeddedBroker
from tests.helpers import wait_for

from .conftest import TEST_POLICY, Stack, one_worker_stack
from .test_fetch_bound import _dead_letters, _decided, _run_on

pytestmark = pytest.mark.integration

_ENCODERS = ("aiokafka.record._crecords.default_records", "aiokafka.record.default_records")


@pytest.fixture(scope="module")
def crafted_stack(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with one_worker_stack(broker, tmp_path_factory.mktemp("s13fetch"), TEST_POLICY, "s13f") as s:
        yield s


def _crafted(
    s: Stack,
    partition: int,
    name: str,
    payload: Callable[[bytes], bytes],
    headers: list,
) -> None:
    """One record sent compressed with ``name`` whose compressed bytes are ``payload`` of the
    records aiokafka built (the encoder replaced in this process for the one send)."""
    modules = [importlib.import_module(m) for m in _ENCODERS]
    saved = [getattr(m, f"{name}_encode") for m in modules]

    async def send() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap,
            compression_type=name,
            enable_idempotence=False,
        )
        await producer.start()
        try:
            await producer.send_and_wait(
                s.catalog.requests,
                b"{}",
                key=b"crafted",
                partition=partition,
                headers=headers or None,
            )
        finally:
            await producer.stop()

    for module in modules:
        setattr(module, f"{name}_encode", payload)
    try:
        asyncio.run(send())
    finally:
        for module, encoder in zip(modules, saved, strict=True):
            setattr(module, f"{name}_encode", encoder)


def _negative_xerial(_: bytes) -> bytes:
    return fetch_bound._XERIAL_HEADER + b"\0\0\0\1\0\0\0\1" + struct.pack("!i", -4) + bytes(8)


def _not_records(_: bytes) -> bytes:
    return codec.gzip_encode(b"\xff" * 64)


def _bad_header_key(records: bytes) -> bytes:
    return codec.gzip_encode(records.replace(b"kk", b"\xff\xfe"))


def test_crafted_batches_are_dead_lettered_and_the_next_events_decided(
    crafted_stack: Stack,
) -> None:
    s = crafted_stack
    crafts = {
        0: ("snappy", _negative_xerial, []),
        1: ("gzip", _not_records, []),
        2: ("gzip", _bad_header_key, [("kk", b"h")]),
    }
    for partition, (name, payload, headers) in crafts.items():
        _crafted(s, partition, name, payload, headers)
    _decided(s, [_run_on(p) for p in crafts])
    letters = _dead_letters(
        s, "batch_undecodable", len(crafts), "the crafted batches' dead letters"
    )
    assert sorted(d["partition"] for d in letters) == sorted(crafts)
    for d in letters:
        assert f"of {s.catalog.requests}[{d['partition']}] refused" in d["error"], d["error"]
    assert s.workers[0].alive(), s.logs()


def _record_past_its_batch(_: bytes) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=2**31 - 1,
    )
    builder.append(100_000, timestamp=1000, key=b"run", value=b"{}", headers=[])
    return codec.gzip_encode(bytes(builder.build()[61:]))


def test_a_record_past_its_batch_does_not_silence_the_partition(crafted_stack: Stack) -> None:
    # its offset delta (the client's) put it at offset base + 100,000: the worker took every
    # offset below as read, the next events on the partition were dropped without a word
    # and the group's offset was committed past them
    s = crafted_stack
    before = len(s.deadletters.records)
    _crafted(s, 1, "gzip", _record_past_its_batch, [])
    _decided(s, [_run_on(1) for _ in range(3)])
    letters = wait_for(
        lambda: (
            [
                d
                for d in map(orjson.loads, s.deadletters.records[before:])
                if "past the batch's last offset" in d["error"]
            ]
            or None
        ),
        30,
        message="the crafted batch's dead letter",
    )
    assert [d["partition"] for d in letters] == [1]
