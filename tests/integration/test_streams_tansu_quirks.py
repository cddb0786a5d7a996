"""Executable notes on where the embedded broker (Tansu) differs from Apache Kafka.

Each test pins a behaviour Baton's code must work around; when a Tansu upgrade makes one fail,
the workaround it names can go.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from baton.streams.embedded import EmbeddedBroker

pytestmark = pytest.mark.integration


def test_list_offsets_reports_the_last_batch_start_not_the_log_end(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    # ListOffsets(latest) answers base offset of the last record batch + 1. Anything that
    # trusts it as "end of log" stops early: Faust's table recovery (aiokafka end_offsets)
    # then skips the tail of a changelog written in multi-record batches. The high watermark
    # in a *fetch* response is right.
    topic = f"{topic_prefix}hw"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50})
    producer.produce(topic, value=b"first")
    producer.flush(10)
    for _ in range(10):  # one batch of ten records, offsets 1..10
        producer.produce(topic, value=b"v")
    producer.flush(10)

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"{topic_prefix}g"})
    try:
        tp = TopicPartition(topic, 0)
        assert consumer.get_watermark_offsets(tp, timeout=10, cached=False) == (0, 2)  # Kafka: 11
        consumer.assign([TopicPartition(topic, 0, 1)])
        assert consumer.poll(10) is not None
        assert consumer.get_watermark_offsets(tp, cached=True)[1] == 11  # from the fetch: right
    finally:
        consumer.close()


def test_metadata_request_for_a_missing_topic_creates_it_with_4_partitions(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    # why ensure_topics lists *all* topics and the worker must not start before it ran:
    # asking for one topic by name (admin, or a Faust consumer subscribing) creates it, with
    # 4 partitions whatever the catalog says.
    topic = f"{topic_prefix}ghost"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 4


def test_partitions_cannot_be_added(broker: EmbeddedBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}grow"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
    with pytest.raises(KafkaException, match="CreatePartitions"):
        admin.create_partitions([NewPartitions(topic, 4)])[topic].result(10)


def test_topic_configs_are_stored_but_not_validated(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    # Apache Kafka rejects both; Tansu accepts them, so only a real Kafka run catches a typo
    # in the catalog's configs. Tansu also neither compacts nor enforces retention.
    topic = f"{topic_prefix}cfg"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    config = {"retention.ms": "not-a-number", "no.such.setting": "1"}
    admin.create_topics([NewTopic(topic, 1, 1, config=config)])[topic].result(10)
