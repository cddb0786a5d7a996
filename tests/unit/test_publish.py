"""The publisher without a broker: what librdkafka refuses locally must not end the worker."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from baton.processors.batch import DeadLetter, Outputs
from baton.processors.publish import BatchPublisher, DeliveryFailed
from tests.unit.publish_support import decided_batch, until

pytestmark = pytest.mark.unit


def test_a_dead_letter_too_large_for_kafka_is_sent_without_its_original() -> None:
    publisher = BatchPublisher(
        {"bootstrap.servers": "127.0.0.1:1"},
        decisions_topic="d",
        stops_topic="s",
        deadletter_topic="dl",
        changelog_topic="c",
    )
    huge = orjson.dumps({"error_kind": "schema", "error": "x", "original": "y" * 2_000_000})
    real, taken = publisher._produce, []

    def spy(topic: str, value: bytes, key: bytes | None) -> None:
        real(topic, value, key)  # librdkafka's own refusal of > 1 MB raises here
        taken.append(orjson.loads(value))

    publisher._produce = spy  # type: ignore[method-assign]
    publisher.produce_dead_letter(DeadLetter(b"run", huge))
    # the short one is queued instead (len(producer) would also count connection requests)
    [short] = taken
    assert short["error_kind"] == "schema" and short["original_dropped"] == "too large for Kafka"


class _Producer:
    """librdkafka's producer as the publisher uses it, the test playing the broker: records
    are acknowledged when the publisher polls, decisions at once, run states only once
    ``states_acked`` is set (failed when ``fail_states`` is)."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, Any]] = []
        #: every record produced, in order, and which of them were acknowledged
        self.produced: list[str] = []
        self.acked: list[str] = []
        self.states_acked = False
        self.fail_states = False
        self.polls = 0

    def produce(self, topic: str, value: bytes | None, key: bytes, **kw: Any) -> None:
        self.queued.append((topic, kw["on_delivery"]))
        self.produced.append(topic)

    def poll(self, timeout: float) -> int:
        self.polls += 1
        keep, served = [], 0
        for topic, on_delivery in self.queued:
            if topic == "c" and not self.states_acked:
                keep.append((topic, on_delivery))
                continue
            failed = self.fail_states and topic == "c"
            on_delivery(_Error() if failed else None, _Message(topic))
            self.acked.append(topic)
            served += 1
        self.queued = keep
        return served

    def flush(self, timeout: float) -> int:
        raise AssertionError("a flush on the at-least-once path")


class _Error:
    def str(self) -> str:
        return "Broker: Not enough in-sync replicas"


class _Message:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0  # written: a report without an offset is not (test_attacks_session14_delivery)


def _publisher() -> tuple[BatchPublisher, _Producer]:
    publisher = BatchPublisher(
        {"bootstrap.servers": "127.0.0.1:1"},
        decisions_topic="d",
        stops_topic="s",
        deadletter_topic="dl",
        changelog_topic="c",
    )
    producer = _Producer()
    publisher._producer = producer  # type: ignore[assignment]
    return publisher, producer


def test_decisions_are_acknowledged_before_any_run_state_is_sent_and_the_states_follow() -> None:
    publisher, producer = _publisher()
    out = decided_batch(3)

    async def scenario() -> None:
        durable = await publisher.publish_decisions_first(out)
        # handed over, not waited for: the worker fetches and decides its next batch now
        assert producer.produced == ["d", "d", "d"] and producer.acked == []
        await until(lambda: producer.acked == ["d", "d", "d"])
        # the decisions are acknowledged; then the states are sent, not yet acknowledged
        await until(lambda: producer.produced == ["d", "d", "d", "c", "c", "c"])
        await asyncio.sleep(0.02)
        assert not durable.done()
        producer.states_acked = True
        await asyncio.wait_for(durable, 5)
        assert producer.acked == ["d", "d", "d", "c", "c", "c"]
        # nothing left in flight: the event loop stops polling the producer
        polls = producer.polls
        await asyncio.sleep(0.02)
        assert producer.polls == polls

    asyncio.run(scenario())


def test_a_state_that_cannot_be_delivered_fails_the_batch_after_its_decisions() -> None:
    publisher, producer = _publisher()
    producer.fail_states = True
    producer.states_acked = True

    async def scenario() -> None:
        durable = await publisher.publish_decisions_first(decided_batch(2))
        with pytest.raises(DeliveryFailed, match=r"could not deliver 2 records .* c\[0\]"):
            await asyncio.wait_for(durable, 5)

    asyncio.run(scenario())


def test_a_worker_that_lost_its_partitions_writes_no_state_after_the_decisions() -> None:
    publisher, producer = _publisher()
    producer.states_acked = True

    def expelled() -> None:
        raise RuntimeError("consumer generation changed from 3 to 4 during a batch")

    async def scenario() -> None:
        durable = await publisher.publish_decisions_first(decided_batch(2), before_state=expelled)
        with pytest.raises(RuntimeError, match="generation changed"):
            await asyncio.wait_for(durable, 5)
        # and the next batch, decided on top of it, writes none either
        later = await publisher.publish_decisions_first(decided_batch(1))
        with pytest.raises(RuntimeError, match="generation changed"):
            await asyncio.wait_for(later, 5)

    asyncio.run(scenario())
    assert producer.produced == ["d", "d", "d"]


def test_publish_returns_only_once_the_states_are_durable_too() -> None:
    publisher, producer = _publisher()
    producer.states_acked = True
    asyncio.run(publisher.publish(decided_batch(2)))
    assert producer.acked == ["d", "d", "c", "c"]


def test_batches_in_flight_write_their_states_in_batch_order_and_become_durable_in_order() -> None:
    publisher, producer = _publisher()

    async def scenario() -> None:
        first = await publisher.publish_decisions_first(decided_batch(2))
        # the next batch is handed over while the first one's decisions are unacknowledged
        assert producer.acked == []
        second = await publisher.publish_decisions_first(decided_batch(1))
        await until(lambda: producer.produced.count("c") == 3)
        # the first batch's states went out before the second's (a run's states in order)
        assert producer.produced == ["d", "d", "d", "c", "c", "c"]
        assert not first.done() and not second.done()
        producer.states_acked = True
        await asyncio.wait_for(second, 5)
        assert first.done()

    asyncio.run(scenario())


def test_a_batch_with_a_record_librdkafka_refuses_at_once_still_completes() -> None:
    # a dead letter too large for Kafka raises in produce() and is sent short instead: the
    # refused record is never counted, so the batch does not wait for its report forever
    publisher, producer = _publisher()
    producer.states_acked = True
    real = producer.produce
    refused = []

    def produce(topic: str, value: bytes | None, key: bytes, **kw: Any) -> None:
        if topic == "d" and not refused:
            refused.append(topic)
            raise BufferError("queue full")  # retried after a poll, then counted once
        real(topic, value, key, **kw)

    producer.produce = produce  # type: ignore[method-assign]

    async def scenario() -> None:
        durable = await publisher.publish_decisions_first(decided_batch(2))
        await asyncio.wait_for(durable, 5)

    asyncio.run(scenario())
    assert refused == ["d"] and producer.acked == ["d", "d", "c", "c"]


def test_an_idle_sweep_sends_nothing_and_is_durable_once_the_batch_before_it_is() -> None:
    publisher, producer = _publisher()

    async def scenario() -> None:
        idle = await publisher.publish_decisions_first(Outputs())
        assert idle.done() and producer.produced == []
        batch = await publisher.publish_decisions_first(decided_batch(1))
        after = await publisher.publish_decisions_first(Outputs())
        assert not after.done() and producer.produced == ["d"]
        producer.states_acked = True
        await asyncio.wait_for(after, 5)
        assert batch.done()

    asyncio.run(scenario())
