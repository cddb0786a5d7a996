"""The aiokafka publisher queues a step's record batches into aiokafka's accumulator itself
(``AiokafkaPublisher._queue_now``): what ``send_batch`` does when the partition has no batch
queued, without its coroutines and ``asyncio.shield``; records for a partition whose batch is
still queued join it (``_join_queued``, as aiokafka's own ``send()`` does); ``send_batch``
where it would wait (a batch being retried, a full one) or refuse.

A real, unstarted ``AIOKafkaProducer`` (no broker): its accumulator and its batches' futures.
The upstream code ``_queue_now`` repeats is pinned: an aiokafka upgrade that changes it fails
here, naming what to re-check in processors/publish_aiokafka.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder, MessageAccumulator
from aiokafka.structs import TopicPartition

from baton.processors.publish_aiokafka import AiokafkaPublisher, _Step

pytestmark = pytest.mark.unit

#: (upstream function, sha256[:16] of its source): _queue_now is send_batch -> add_batch ->
#: _append_batch for a partition with no batch queued, and defers to send_batch otherwise
PINNED = [
    (AIOKafkaProducer.send_batch, "bf42b0f0c5c0646d"),
    (MessageAccumulator.add_batch, "5ed1c5b1367ad854"),
    (MessageAccumulator._append_batch, "4762abfc42cbaa15"),
    # _join_queued: a queued batch's builder is open until the sender drains it
    (MessageAccumulator._pop_batch, "41cc98a298ef2628"),
    (MessageAccumulator.add_message, "56ff7e6c19185f83"),
    (BatchBuilder.append, "657d76f55157d9ca"),
    (BatchBuilder._build, "2ea37ea8632073e3"),
]


@pytest.mark.parametrize("pin", PINNED, ids=[p[0].__qualname__ for p in PINNED])
def test_the_upstream_code_queue_now_repeats_is_unchanged(pin: Any) -> None:
    function, pinned = pin
    digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
    assert digest == pinned, (
        f"aiokafka's {function.__qualname__} changed (source hash {digest}, pinned {pinned}): "
        "re-check AiokafkaPublisher._queue_now in processors/publish_aiokafka.py against it, "
        "then update PINNED in tests/unit/test_publish_aiokafka_queue.py"
    )


class _Metadata:
    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(8)) if topic == "d" else None


def _started() -> tuple[AiokafkaPublisher, AIOKafkaProducer]:
    """A publisher as ``start()`` leaves it, on a producer that never connects."""
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", linger_ms=0)
    publisher = AiokafkaPublisher(
        {"bootstrap_servers": "127.0.0.1:1"},
        decisions_topic="d",
        stops_topic="s",
        deadletter_topic="dl",
        changelog_topic="c",
    )
    publisher._producer = producer
    publisher._accumulator = producer._message_accumulator
    publisher._metadata = _Metadata()
    producer.client.cluster.partitions_for_topic = _Metadata().partitions_for_topic  # type: ignore[method-assign]
    return publisher, producer


def _filled(producer: AIOKafkaProducer, value: bytes = b"v") -> Any:
    batch = producer.create_batch()
    batch.append(timestamp=None, key=b"k", value=value, headers=None)
    return batch


def test_a_partition_with_nothing_queued_gets_the_batch_with_its_own_future() -> None:
    async def scenario() -> None:
        publisher, producer = _started()
        acc = producer._message_accumulator
        future = publisher._queue_now(_filled(producer), "d", 3)
        queued = acc._batches[TopicPartition("d", 3)]
        assert future is not None and len(queued) == 1 and future is queued[0].future
        assert acc._waiter_future.done()  # the sender is woken, as by send_batch
        await producer.stop()

    asyncio.run(scenario())


def test_queue_now_leaves_to_send_batch_what_it_would_wait_for_or_refuse() -> None:
    async def scenario() -> None:
        publisher, producer = _started()
        acc = producer._message_accumulator
        assert publisher._queue_now(_filled(producer), "d", 3) is not None
        # the partition's previous batch is still queued: send_batch waits for it to go
        assert publisher._queue_now(_filled(producer), "d", 3) is None
        # a topic or partition the metadata does not know: send_batch waits for it or refuses
        assert publisher._queue_now(_filled(producer), "c", 0) is None
        assert publisher._queue_now(_filled(producer), "d", 9) is None
        # a failed or closed accumulator: send_batch raises
        acc._exception = RuntimeError("fenced")
        assert publisher._queue_now(_filled(producer), "d", 4) is None
        acc._exception = None
        acc._closed = True
        assert publisher._queue_now(_filled(producer), "d", 4) is None
        assert len(acc._batches[TopicPartition("d", 3)]) == 1
        assert not acc._batches.get(TopicPartition("d", 4))
        # not started (no accumulator taken): always send_batch's path
        publisher._accumulator = None
        acc._closed = False
        assert publisher._queue_now(_filled(producer), "d", 5) is None
        await producer.stop()

    asyncio.run(scenario())


def test_a_step_joins_a_partition_batch_still_queued_instead_of_waiting_for_it() -> None:
    """Partition 3 still holds the previous step's batch (not drained into a request yet):
    the step's record for it joins that batch (one request takes both; no wait), 1 and 5
    get batches of their own; the step completes once each batch is answered."""

    async def scenario() -> None:
        publisher, producer = _started()
        acc = producer._message_accumulator
        assert publisher._queue_now(_filled(producer, b"previous"), "d", 3) is not None
        step = _Step("127.0.0.1:1", 60)
        for partition in (1, 3, 5):
            step.records[("d", partition)] = [(b"k", b"new", None)]
        await asyncio.wait_for(publisher._hand_over(step), 1)
        queued = {p: list(acc._batches[TopicPartition("d", p)]) for p in (1, 3, 5)}
        assert [len(queued[p]) for p in (1, 3, 5)] == [1, 1, 1]
        assert [queued[p][0].record_count for p in (1, 3, 5)] == [1, 2, 1]
        assert step.count == 3
        step.seal()
        for p in (1, 5):
            queued[p][0].done(base_offset=0)
        await asyncio.sleep(0)
        assert not step.future.done()  # partition 3's batch not answered yet
        queued[3][0].done(base_offset=0)
        await asyncio.wait_for(step.future, 5)
        await producer.stop()

    asyncio.run(scenario())


def test_a_step_queues_its_ready_partitions_before_waiting_for_a_batch_being_retried() -> None:
    """Partition 3's queued batch is a retry (built already, it takes nothing more): the
    step's partitions 1 and 5 are queued at once (they go in the next request), 3 once the
    retry is drained (send_batch's wait), not 5 behind it a round trip later."""

    async def scenario() -> None:
        publisher, producer = _started()
        acc = producer._message_accumulator
        assert publisher._queue_now(_filled(producer, b"previous"), "d", 3) is not None
        retried = acc._batches[TopicPartition("d", 3)][0]
        retried._retry_count = 1
        step = _Step("127.0.0.1:1", 60)
        for partition in (1, 3, 5):
            step.records[("d", partition)] = [(b"k", b"new", None)]
        handing = asyncio.ensure_future(publisher._hand_over(step))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not handing.done()  # waiting for the retry to go
        assert [len(acc._batches[TopicPartition("d", p)]) for p in (1, 3, 5)] == [1, 1, 1]
        assert retried.record_count == 1
        acc._batches[TopicPartition("d", 3)].popleft().drain_ready()  # the sender takes it
        await asyncio.wait_for(handing, 5)
        assert len(acc._batches[TopicPartition("d", 3)]) == 1
        assert step.count == 3
        await producer.stop()

    asyncio.run(scenario())


def test_a_failed_record_batch_fails_its_step_naming_its_partition() -> None:
    async def scenario() -> None:
        publisher, producer = _started()
        acc = producer._message_accumulator
        step = _Step("127.0.0.1:1", 60)
        step.records[("d", 2)] = [(b"k", b"v", None)]
        await publisher._hand_over(step)
        step.seal()
        # a second step's record joins the same queued batch: its failure fails both steps
        joined = _Step("127.0.0.1:1", 60)
        joined.records[("d", 2)] = [(b"k", b"w", None), (b"k", b"x", None)]
        await publisher._hand_over(joined)
        joined.seal()
        assert len(acc._batches[TopicPartition("d", 2)]) == 1
        acc._batches[TopicPartition("d", 2)][0].failure(RuntimeError("broker said no"))
        with pytest.raises(Exception, match=r"could not deliver 1 records .* d\[2\]: Runtime"):
            await asyncio.wait_for(step.future, 5)
        with pytest.raises(Exception, match=r"could not deliver 2 records .* d\[2\]: Runtime"):
            await asyncio.wait_for(joined.future, 5)
        await producer.stop()

    asyncio.run(scenario())
