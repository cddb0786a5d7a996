"""librdkafka's murmur2_random puts every key on the partition partition_for predicts."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for

pytestmark = pytest.mark.integration

PARTITIONS = 12


def _placements(
    bootstrap: str, topic: str, keys: list[bytes], partitioner: str
) -> dict[bytes, int]:
    placed: dict[bytes, int] = {}
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            placed[msg.key()] = msg.partition()

    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": partitioner})
    for key in keys:
        producer.produce(topic, key=key, value=b"{}", on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(20) == 0
    assert errors == []
    return placed


@pytest.fixture
def topic(broker: EmbeddedBroker, topic_prefix: str) -> str:
    name = f"{topic_prefix}placement"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(name, PARTITIONS, 1)])[name].result(10)
    assert len(admin.list_topics(name, timeout=10).topics[name].partitions) == PARTITIONS
    return name


def test_500_keys_land_where_partition_for_predicts(broker: EmbeddedBroker, topic: str) -> None:
    keys = [f"run-{i:05d}-{i * 7919:x}".encode() for i in range(500)]
    placed = _placements(broker.bootstrap, topic, keys, "murmur2_random")
    assert len(placed) == 500
    wrong = {k: p for k, p in placed.items() if p != partition_for(k, PARTITIONS)}
    assert wrong == {}


def test_confluent_default_partitioner_would_split_runs(broker: EmbeddedBroker, topic: str) -> None:
    # why every producer must set murmur2_random: the default (CRC32) disagrees with Faust
    keys = [f"run-{i:05d}".encode() for i in range(100)]
    placed = _placements(broker.bootstrap, topic, keys, "consistent_random")
    disagreeing = sum(p != partition_for(k, PARTITIONS) for k, p in placed.items())
    assert disagreeing > 50
