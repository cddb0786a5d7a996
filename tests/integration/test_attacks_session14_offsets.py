"""Session 14 (H5): Tansu takes a produced batch's last offset delta as the client wrote it
(processors/fetch_bound.py and docs/security.md, "Offsets"; /tmp/l14/H5_findings.md F1, F3).

Kafka refuses a batch whose offset range does not match its records (LogValidator:
"Batch has an invalid offset range"). Tansu 0.6 stores it and numbers the partition from its
claimed end: one batch claiming -1 fails the partition's next write (a worker whose decisions
go there exits, 75), one claiming -5 has the next three acknowledged at negative offsets no
reader gets. This pins that, so a Tansu that refuses such a batch is noticed (and the docs
and the dead-letter path revisited).
"""

from __future__ import annotations

import asyncio
import struct
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.record._crecords import cutil

from baton.streams.embedded import EmbeddedBroker

pytestmark = pytest.mark.integration


def _claiming(batch: bytes, last_delta: int) -> bytes:
    raw = bytearray(batch)
    struct.pack_into(">i", raw, 23, last_delta)  # lastOffsetDelta
    struct.pack_into(">I", raw, 17, cutil.crc32c_cython(bytes(raw[21:])))
    return bytes(raw)


async def _produce(bootstrap: str, topic: str, last_delta: int) -> list[int | str]:
    """The crafted batch's offset, then the offsets (or errors) of two honest writes."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before", partition=0)
        batch = producer.create_batch()
        batch.append(timestamp=None, key=b"k", value=b"{}", headers=[])
        batch._buffer = _claiming(bytes(batch._build()), last_delta)
        got: list[int | str] = []
        try:
            sent = await producer.send_batch(batch, topic, partition=0)
            got.append((await sent).offset)
        except KafkaError as exc:
            return [type(exc).__name__]
        for value in (b"after-1", b"after-2"):
            try:
                got.append((await producer.send_and_wait(topic, value, partition=0)).offset)
            except KafkaError as exc:
                got.append(type(exc).__name__)
        return got
    finally:
        await producer.stop()


@pytest.mark.xfail(
    strict=True,
    reason="Tansu 0.6 stores a batch claiming a negative last offset delta and numbers the "
    "partition from it: the next write fails (UnknownError) -- measured [1, 'UnknownError', 2]",
)
def test_the_broker_refuses_a_batch_that_ends_before_it_starts(broker: EmbeddedBroker) -> None:
    topic = f"s14-offsets-{uuid.uuid4().hex[:8]}"
    got = asyncio.run(_produce(broker.bootstrap, topic, -1))
    assert len(got) == 1 and isinstance(got[0], str), f"accepted, then: {got}"
