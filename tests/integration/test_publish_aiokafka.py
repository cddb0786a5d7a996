"""The aiokafka publisher on a real Tansu: a batch's decisions and states in one request each,
every record on its partition; an unreachable or vanished broker named in the error."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from baton.processors.batch import BatchProcessor, InputRecord, Outputs
from baton.processors.publish_aiokafka import AiokafkaPublisher, DeliveryFailed
from baton.processors.state import RunState
from baton.schemas.errors import BrokerUnavailable
from baton.schemas.policy import load_policy
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from tests.helpers import handoff

pytestmark = pytest.mark.integration

_PARTITIONS = 8


def _topics(bootstrap: str, prefix: str) -> dict[str, str]:
    names = {k: f"{prefix}{k}" for k in ("decisions", "stops", "dead", "changelog")}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(t, _PARTITIONS, 1) for t in names.values()]).values():
        f.result(10)
    return names


def _publisher(bootstrap: str, names: dict[str, str], **options: Any) -> AiokafkaPublisher:
    return AiokafkaPublisher(
        {"bootstrap_servers": bootstrap, **options},
        decisions_topic=names["decisions"],
        stops_topic=names["stops"],
        deadletter_topic=names["dead"],
        changelog_topic=names["changelog"],
    )


def _batch(runs: int) -> Outputs:
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(load_policy(None), _PARTITIONS, states, worker="w")
    records = []
    for i in range(runs):
        key = f"run_{i}".encode()
        raw = handoff(f"run_{i}", 1, "x").to_json()
        records.append(InputRecord("req", partition_for(key, _PARTITIONS), i, key, raw))
    return proc.process(records, datetime.now(UTC))


def _read(bootstrap: str, topic: str, count: int) -> list[tuple[int, bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "read"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(_PARTITIONS)])
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + 15
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append((msg.partition(), msg.key()))
    finally:
        consumer.close()
    return got


def test_a_batch_is_two_requests_and_every_record_lands_on_its_run_partition(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    from aiokafka.producer import sender

    names = _topics(broker.bootstrap, topic_prefix)
    out = _batch(40)
    requests: list[int] = []
    real = sender.Sender._send_produce_req

    async def counted(self: Any, node_id: int, batches: dict[Any, Any]) -> None:
        requests.append(len(batches))
        await real(self, node_id, batches)

    async def scenario() -> None:
        publisher = _publisher(broker.bootstrap, names)
        try:
            await publisher.start()
            sender.Sender._send_produce_req = counted  # type: ignore[method-assign]
            await publisher.publish(out)
        finally:
            sender.Sender._send_produce_req = real  # type: ignore[method-assign]
            await publisher.stop()

    asyncio.run(scenario())
    # 40 runs over the 8 partitions: their decisions in one request, their states in one more
    assert requests == [_PARTITIONS, _PARTITIONS]
    expected = sorted((p, d.run_id.encode()) for p, d in out.decisions)
    assert sorted(_read(broker.bootstrap, names["decisions"], 40)) == expected
    assert sorted(_read(broker.bootstrap, names["changelog"], 40)) == expected


def test_an_unreachable_broker_is_named_when_the_producer_starts(free_port: int) -> None:
    names = {k: k for k in ("decisions", "stops", "dead", "changelog")}
    publisher = _publisher(f"127.0.0.1:{free_port}", names)
    with pytest.raises(BrokerUnavailable, match=rf"cannot reach Kafka at 127\.0\.0\.1:{free_port}"):
        asyncio.run(publisher.start())


def test_a_broker_gone_fails_the_batch_naming_its_address(tmp_path: Path) -> None:
    with EmbeddedBroker(log_dir=tmp_path) as gone:
        names = _topics(gone.bootstrap, "g.")

        async def scenario() -> None:
            publisher = _publisher(gone.bootstrap, names, request_timeout_ms=2000)
            await publisher.start()
            await publisher.publish(_batch(4))  # delivered while the broker is up
            gone.stop()
            t0 = time.monotonic()
            durable = await publisher.publish_decisions_first(_batch(4))
            with pytest.raises(
                DeliveryFailed, match=rf"Kafka at {gone.bootstrap}: .* to g\.decisions\[.* 2 s"
            ):
                await asyncio.wait_for(durable, 30)
            assert time.monotonic() - t0 < 20
            await publisher.stop(timeout_s=1)

        asyncio.run(scenario())
