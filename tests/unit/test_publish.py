"""The publisher without a broker: what librdkafka refuses locally must not end the worker."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from baton.processors.batch import BatchProcessor, DeadLetter, InputRecord, Outputs
from baton.processors.publish import BatchPublisher, DeliveryFailed
from baton.processors.state import RunState
from baton.schemas.policy import load_policy
from tests.helpers import handoff

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
    """librdkafka's producer as the publisher uses it: what was produced, flush by flush.

    A flush of run states waits up to its timeout for ``states_acked`` (the test plays the
    broker), and fails their delivery when ``fail_states`` is set."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, Any]] = []
        self.flushes: list[list[str]] = []
        self.states_acked = threading.Event()
        self.fail_states = False

    def produce(self, topic: str, value: bytes | None, key: bytes, **kw: Any) -> None:
        self.queued.append((topic, kw["on_delivery"]))

    def flush(self, timeout: float) -> int:
        if not self.queued:
            return 0
        if any(topic == "c" for topic, _ in self.queued) and not self.states_acked.wait(timeout):
            return len(self.queued)  # still waiting for the broker
        queued, self.queued = self.queued, []
        for topic, on_delivery in queued:
            failed = self.fail_states and topic == "c"
            on_delivery(_Error() if failed else None, _Message(topic))
        self.flushes.append([topic for topic, _ in queued])
        return 0

    def poll(self, timeout: float) -> int:
        return 0


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


def _batch(runs: int) -> Outputs:
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), 1, states, worker="w")
    records = [
        InputRecord(
            "gov.handoff.requests", 0, i, f"run_{i}".encode(), handoff(f"run_{i}", 1, "x").to_json()
        )
        for i in range(runs)
    ]
    return proc.process(records, datetime.now(UTC))


def test_decisions_are_acknowledged_before_any_run_state_is_sent_and_the_states_follow() -> None:
    publisher, producer = _publisher()
    out = _batch(3)

    async def scenario() -> None:
        durable = await publisher.publish_decisions_first(out)
        # the decisions are out and acknowledged; the states are sent, not yet acknowledged:
        # the worker fetches its next batch meanwhile and acknowledges this one only later
        assert producer.flushes == [["d", "d", "d"]]
        await asyncio.sleep(0.05)
        assert not durable.done()
        producer.states_acked.set()
        await asyncio.wait_for(durable, 5)
        # all states in one flush, each partition's last one included (no lone tail write)
        assert producer.flushes == [["d", "d", "d"], ["c", "c", "c"]]

    asyncio.run(scenario())


def test_a_state_that_cannot_be_delivered_fails_the_batch_after_its_decisions() -> None:
    publisher, producer = _publisher()
    producer.fail_states = True
    producer.states_acked.set()

    async def scenario() -> None:
        durable = await publisher.publish_decisions_first(_batch(2))
        with pytest.raises(DeliveryFailed, match=r"could not deliver 2 records .* c\[0\]"):
            await durable

    asyncio.run(scenario())


def test_a_worker_that_lost_its_partitions_writes_no_state_after_the_decisions() -> None:
    publisher, producer = _publisher()

    def expelled() -> None:
        raise RuntimeError("consumer generation changed from 3 to 4 during a batch")

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="generation changed"):
            await publisher.publish_decisions_first(_batch(2), before_state=expelled)

    asyncio.run(scenario())
    assert producer.flushes == [["d", "d"]] and producer.queued == []


def test_publish_returns_only_once_the_states_are_durable_too() -> None:
    publisher, producer = _publisher()
    producer.states_acked.set()
    asyncio.run(publisher.publish(_batch(2)))
    assert producer.flushes == [["d", "d"], ["c", "c"]]


def test_a_flush_the_broker_answers_at_once_stays_on_the_event_loop() -> None:
    # a hand-off to a thread and back cost more than the round trip on a busy host
    publisher, producer = _publisher()
    producer.states_acked.set()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def no_thread(*args: Any) -> None:
            raise AssertionError("flush waited in a thread")

        loop.run_in_executor = no_thread  # type: ignore[method-assign,assignment]
        await publisher.publish(_batch(2))

    asyncio.run(scenario())
    assert producer.flushes == [["d", "d"], ["c", "c"]]
