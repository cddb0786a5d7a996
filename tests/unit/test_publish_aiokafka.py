"""The aiokafka publisher without a broker: the at-least-once order of decisions, run states and
acknowledgements, failed deliveries and a full producer, the test playing aiokafka's producer."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError
from pydantic import SecretStr

from baton.processors.batch import DeadLetter, Outputs
from baton.processors.batch_records import Forward
from baton.processors.publish import BatchPublisher
from baton.processors.publish_aiokafka import AiokafkaPublisher, DeliveryFailed, RecordTooLarge
from baton.processors.publish_select import aiokafka_options, worker_publisher
from baton.schemas.decision import Outcome
from baton.schemas.settings import Settings
from baton.streams.partitioner import partition_for
from tests.unit.publish_support import decided_batch, until

pytestmark = pytest.mark.unit

#: a batch's answer when the broker wrote it (RecordMetadata; one without an offset is not
#: written: test_attacks_session14_delivery)
_WRITTEN = SimpleNamespace(offset=0)


class _Batch:
    """aiokafka's BatchBuilder as the publisher fills it (``size`` records at most)."""

    def __init__(self, size: int) -> None:
        self.records: list[tuple[Any, Any, Any]] = []
        self.size = size

    def append(self, *, timestamp: Any, key: Any, value: Any, headers: Any) -> Any:
        if len(self.records) >= self.size:
            return None
        self.records.append((key, value, headers))
        return object()


class _Producer:
    """aiokafka's producer as the publisher uses it: ``send_batch`` queues a partition's record
    batch and returns its future; the test answers the futures (``ack``/``fail``) as the
    broker would, and may make ``send_batch`` wait for room (``full``)."""

    def __init__(self) -> None:
        #: (topic, value, key, partition, headers, future) per record, in the order sent
        self.sent: list[tuple[str, Any, Any, Any, Any, asyncio.Future[Any]]] = []
        self.batches = 0
        self.batch_size = 10_000
        self.room = asyncio.Event()
        self.room.set()

    @property
    def topics(self) -> list[str]:
        return [s[0] for s in self.sent]

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(8))

    def create_batch(self) -> _Batch:
        return _Batch(self.batch_size)

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        await self.room.wait()  # aiokafka's accumulator full: wait for the sender to drain it
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.batches += 1
        for key, value, headers in batch.records:
            self.sent.append((topic, value, key, partition, headers, future))
        return future

    def ack(self, topic: str) -> None:
        for s in self.sent:
            if s[0] == topic and not s[5].done():
                s[5].set_result(_WRITTEN)

    def fail(self, topic: str) -> None:
        for s in self.sent:
            if s[0] == topic and not s[5].done():
                s[5].set_exception(KafkaTimeoutError())


def _publisher() -> tuple[AiokafkaPublisher, _Producer]:
    publisher = AiokafkaPublisher(
        {"bootstrap_servers": "127.0.0.1:1"},
        decisions_topic="d",
        stops_topic="s",
        deadletter_topic="dl",
        changelog_topic="c",
    )
    producer = _Producer()
    publisher._producer = producer  # started already: no connection in a unit test
    publisher._partitions = {"d": 8, "s": 8, "dl": 8}
    return publisher, producer


def test_states_are_sent_only_once_the_batch_decisions_are_acknowledged() -> None:
    async def scenario() -> None:
        publisher, producer = _publisher()
        durable = await publisher.publish_decisions_first(decided_batch(3))
        # handed over, not waited for: the worker fetches and decides its next batch now
        assert producer.topics == ["d", "d", "d"]
        await asyncio.sleep(0.01)
        assert producer.topics == ["d", "d", "d"], "a state before its decisions were acked"
        producer.ack("d")
        await until(lambda: producer.topics == ["d", "d", "d", "c", "c", "c"])
        # the states carry the batch's encoded bytes, on the run's partition
        assert all(s[1] and s[3] == 0 for s in producer.sent[3:])
        await asyncio.sleep(0.01)
        assert not durable.done(), "durable before its states were acknowledged"
        producer.ack("c")
        await asyncio.wait_for(durable, 5)

    asyncio.run(scenario())


def test_states_wait_for_the_previous_batch_states_and_durable_goes_in_batch_order() -> None:
    async def scenario() -> None:
        publisher, producer = _publisher()
        first = await publisher.publish_decisions_first(decided_batch(2))
        second = await publisher.publish_decisions_first(decided_batch(1, first=5))
        # the second batch's decision acknowledged before the first's: its state waits
        producer.sent[2][5].set_result(_WRITTEN)
        await asyncio.sleep(0.01)
        assert "c" not in producer.topics
        producer.ack("d")
        await until(lambda: producer.topics.count("c") == 3)
        # the first batch's states went out before the second's (a run's states in order)
        assert [s[2] for s in producer.sent[3:]] == [b"run_0", b"run_1", b"run_5"]
        producer.sent[5][5].set_result(_WRITTEN)  # the second batch's state, acknowledged first
        await asyncio.sleep(0.01)
        assert not second.done(), "a batch durable before the batch before it"
        producer.ack("c")
        await asyncio.wait_for(second, 5)
        assert first.done()

    asyncio.run(scenario())


def test_a_decision_not_delivered_fails_its_batch_and_every_later_one_without_states() -> None:
    async def scenario() -> None:
        publisher, producer = _publisher()
        durable = await publisher.publish_decisions_first(decided_batch(2))
        later = await publisher.publish_decisions_first(decided_batch(1, first=5))
        producer.fail("d")
        with pytest.raises(DeliveryFailed, match=r"could not deliver .* at 127\.0\.0\.1:1: d\[0\]"):
            await asyncio.wait_for(durable, 5)
        with pytest.raises(DeliveryFailed):
            await asyncio.wait_for(later, 5)
        assert "c" not in producer.topics  # no state remembers an undelivered decision

    asyncio.run(scenario())


def test_a_state_not_delivered_fails_the_batch() -> None:
    async def scenario() -> None:
        publisher, producer = _publisher()
        durable = await publisher.publish_decisions_first(decided_batch(2))
        producer.ack("d")
        await until(lambda: "c" in producer.topics)
        producer.fail("c")
        with pytest.raises(DeliveryFailed, match=r"could not deliver 2 records .* c\[0\]"):
            await asyncio.wait_for(durable, 5)

    asyncio.run(scenario())


def test_a_worker_that_lost_its_partitions_writes_no_state() -> None:
    def expelled() -> None:
        raise RuntimeError("consumer generation changed from 3 to 4 during a batch")

    async def scenario() -> None:
        publisher, producer = _publisher()
        durable = await publisher.publish_decisions_first(decided_batch(2), before_state=expelled)
        producer.ack("d")
        with pytest.raises(RuntimeError, match="generation changed"):
            await asyncio.wait_for(durable, 5)
        later = await publisher.publish_decisions_first(decided_batch(1, first=5))
        producer.ack("d")
        with pytest.raises(RuntimeError, match="generation changed"):
            await asyncio.wait_for(later, 5)
        assert producer.topics == ["d", "d", "d"]

    asyncio.run(scenario())


def test_a_full_producer_makes_publish_wait_and_drops_nothing() -> None:
    async def scenario() -> None:
        publisher, producer = _publisher()
        producer.room.clear()
        publishing = asyncio.ensure_future(publisher.publish_decisions_first(decided_batch(3)))
        await asyncio.sleep(0.02)
        assert not publishing.done() and producer.sent == []
        producer.room.set()
        durable = await asyncio.wait_for(publishing, 5)
        assert producer.topics == ["d", "d", "d"]
        producer.ack("d")
        await until(lambda: producer.topics.count("c") == 3)
        producer.ack("c")
        await asyncio.wait_for(durable, 5)

    asyncio.run(scenario())


def test_a_dead_letter_too_large_for_kafka_is_sent_without_its_original() -> None:
    async def scenario() -> None:
        publisher, producer = _publisher()
        huge = orjson.dumps({"error_kind": "schema", "error": "x", "original": "y" * 2_000_000})
        out = Outputs(dead_letters=[DeadLetter(b"run", huge)])
        durable = await publisher.publish_decisions_first(out)
        [(topic, value, key, _p, _h, _f)] = producer.sent
        short = orjson.loads(value)
        assert topic == "dl" and key is None
        assert short["error_kind"] == "schema"
        assert short["original_dropped"] == "too large for Kafka"
        producer.ack("dl")
        await asyncio.wait_for(durable, 5)

    asyncio.run(scenario())


def test_stops_control_records_and_forwards_reach_their_topics() -> None:
    async def scenario() -> None:
        publisher, producer = _publisher()
        stop_batch = decided_batch(1)
        [(_, decision)] = stop_batch.decisions
        stopped = dataclasses.replace(decision, outcome=Outcome.STOP)
        publisher.enqueue(stopped)  # the control follower's record, from its thread
        out = Outputs(
            forwards=[Forward("src", 3, b"run_9", b"{}", [("baton-forwarded", b"1")])],
            decisions=[(0, stopped)],
        )
        durable = await publisher.publish_decisions_first(out)
        # the queued one first, on its key's murmur2 partition (as Faust's), then the batch's
        mine = partition_for(stopped.run_id.encode(), 8)
        assert [(s[0], s[3]) for s in producer.sent] == [
            ("d", mine), ("s", mine), ("src", 3), ("d", 0), ("s", 0),
        ]  # fmt: skip
        assert producer.sent[2][4] == [("baton-forwarded", b"1")]
        for topic in ("d", "s", "src"):
            producer.ack(topic)
        await asyncio.wait_for(durable, 5)

    asyncio.run(scenario())


def test_the_producer_options_carry_the_same_sasl_and_tls_settings_as_librdkafka(
    tmp_path: Any,
) -> None:
    s = Settings(
        bootstrap="a:9093, b:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="baton",
        sasl_password=SecretStr("pw"),
    )
    options = aiokafka_options(s)
    assert options["bootstrap_servers"] == ["a:9093", "b:9093"]
    assert options["security_protocol"] == "SASL_SSL" and options["ssl_context"] is not None
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == ("SCRAM-SHA-512", "baton")
    assert options["sasl_plain_password"] == "pw"
    assert "ssl_context" not in aiokafka_options(Settings(bootstrap="a:9092"))


def test_exactly_once_stays_on_librdkafka_and_at_least_once_takes_the_setting() -> None:
    topics = {
        "decisions_topic": "d",
        "stops_topic": "s",
        "deadletter_topic": "dl",
        "changelog_topic": "c",
    }
    s = Settings(bootstrap="127.0.0.1:1")
    assert isinstance(worker_publisher(s, **topics, transactional_id=None), AiokafkaPublisher)
    assert isinstance(worker_publisher(s, **topics, transactional_id="t"), BatchPublisher)
    old = s.model_copy(update={"worker_producer": "librdkafka"})
    assert isinstance(worker_publisher(old, **topics, transactional_id=None), BatchPublisher)


def test_a_partition_with_more_records_than_a_record_batch_holds_goes_in_several() -> None:
    async def scenario() -> None:
        publisher, producer = _publisher()
        producer.batch_size = 2
        durable = await publisher.publish_decisions_first(decided_batch(5))
        assert producer.topics == ["d"] * 5 and producer.batches == 3
        assert [s[2] for s in producer.sent] == [f"run_{i}".encode() for i in range(5)]
        producer.ack("d")
        await until(lambda: producer.topics.count("c") == 5)
        producer.ack("c")
        await asyncio.wait_for(durable, 5)

    asyncio.run(scenario())


def test_a_decision_larger_than_kafka_takes_fails_the_batch_before_anything_is_sent() -> None:
    async def scenario() -> None:
        publisher, producer = _publisher()
        out = decided_batch(2)
        partition, decision = out.decisions[1]
        huge = dataclasses.replace(decision, run_id="r" * 1_000_001)
        out.decisions[1] = (partition, huge)
        with pytest.raises(RecordTooLarge, match=r"record of \d+ bytes for d is larger than"):
            await publisher.publish_decisions_first(out)
        assert producer.sent == []

    asyncio.run(scenario())


def test_the_producer_id_request_offers_v3_to_a_broker_that_has_it_and_v0_to_one_that_not() -> None:
    import inspect

    from aiokafka.producer import sender
    from aiokafka.protocol.transaction import InitProducerIdRequest_v0

    from baton.processors import publish_pid

    request = publish_pid.InitProducerIdRequest(None, 60_000)
    v3 = request.prepare({22: (0, 4)})  # Tansu, Apache Kafka 3.x
    assert isinstance(v3, publish_pid.InitProducerIdRequest_v3)
    # a new producer: id -1, epoch -1 (Tansu refuses a request without them)
    assert v3.encode()[-11:] == b"\xff" * 10 + b"\x00"
    assert isinstance(request.prepare({22: (0, 2)}), InitProducerIdRequest_v0)
    publish_pid.install()
    assert sender.InitProducerIdRequest is publish_pid.InitProducerIdRequest
    # pinned upstream: aiokafka's sender builds the request by that module name
    assert "InitProducerIdRequest(" in inspect.getsource(sender.InitPIDHandler.create_request)
