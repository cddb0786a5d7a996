"""ensure_topics creates the catalog on a real broker, tolerates races, refuses wrong counts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from baton.schemas.errors import BrokerUnavailable, TopicMismatch
from baton.streams.embedded import EmbeddedBroker
from baton.streams.kafka import admin_config, consumer_config, producer_config
from baton.streams.topics import TopicCatalog, ensure_topics
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def _admin_conf(broker: EmbeddedBroker) -> dict[str, object]:
    return admin_config({"bootstrap.servers": broker.bootstrap})


def _create(broker: EmbeddedBroker, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(10)


def test_creates_every_topic_with_its_count_and_config(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    catalog = TopicCatalog(prefix=topic_prefix, partitions=4, replication=1)
    counts = ensure_topics(_admin_conf(broker), catalog, timeout=10)
    assert counts == {spec.name: spec.partitions for spec in catalog.specs()}
    assert counts[catalog.control] == 1

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    metadata = admin.list_topics(timeout=10)
    for spec in catalog.specs():
        assert len(metadata.topics[spec.name].partitions) == spec.partitions
        resource = ConfigResource("topic", spec.name)
        stored = admin.describe_configs([resource])[resource].result(10)
        assert {k: stored[k].value for k in spec.config} == dict(spec.config)


def test_second_call_changes_nothing(broker: EmbeddedBroker, topic_prefix: str) -> None:
    catalog = TopicCatalog(prefix=topic_prefix, partitions=3)
    first = ensure_topics(_admin_conf(broker), catalog, timeout=10)
    assert ensure_topics(_admin_conf(broker), catalog, timeout=10) == first


def test_workers_racing_to_create_topics_all_succeed(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    catalog = TopicCatalog(prefix=topic_prefix, partitions=5)
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda _: ensure_topics(_admin_conf(broker), catalog, timeout=10), range(4))
        )
    assert all(result == results[0] for result in results)
    assert results[0][catalog.requests] == 5


def test_wrong_partition_count_names_topic_counts_and_reason(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    catalog = TopicCatalog(prefix=topic_prefix, partitions=4)
    _create(broker, catalog.approvals, 3)
    with pytest.raises(TopicMismatch) as info:
        ensure_topics(_admin_conf(broker), catalog, timeout=10)
    message = str(info.value)
    assert f"topic '{catalog.approvals}' has 3 partitions, expected 4" in message
    assert "co-partitioned" in message
    assert "recreate the topics" in message


def test_existing_deployment_with_other_count_suggests_the_setting(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    ensure_topics(_admin_conf(broker), TopicCatalog(prefix=topic_prefix, partitions=6), 10)
    with pytest.raises(TopicMismatch, match="set BATON_PARTITIONS=6 to use them"):
        ensure_topics(_admin_conf(broker), TopicCatalog(prefix=topic_prefix, partitions=8), 10)


def test_control_topic_must_have_one_partition(broker: EmbeddedBroker, topic_prefix: str) -> None:
    catalog = TopicCatalog(prefix=topic_prefix, partitions=2)
    _create(broker, catalog.control, 2)
    with pytest.raises(TopicMismatch, match=r"has 2 partitions, expected 1 .*total order"):
        ensure_topics(_admin_conf(broker), catalog, timeout=10)


def test_unreachable_broker_is_reported_quickly(free_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        ensure_topics(
            admin_config({"bootstrap.servers": f"127.0.0.1:{free_port}"}), TopicCatalog(), 1
        )
    assert str(info.value) == (
        f"cannot reach Kafka at 127.0.0.1:{free_port} (timed out after 1 s); is the broker running?"
    )
    assert time.monotonic() - started < 5


def test_client_configs_work_against_the_broker(broker: EmbeddedBroker, topic_prefix: str) -> None:
    catalog = TopicCatalog(prefix=topic_prefix, partitions=4)
    ensure_topics(_admin_conf(broker), catalog, timeout=10)
    base = {"bootstrap.servers": broker.bootstrap}
    producer = Producer(producer_config(base))
    for i in range(100):
        producer.produce(catalog.requests, key=b"run-%d" % i, value=b"{}")
        producer.poll(0)
    assert producer.flush(10) == 0
    consumer = Consumer(consumer_config(base, f"{topic_prefix}g", {"session.timeout.ms": 6000}))
    try:
        consumer.subscribe([catalog.requests])
        seen: list[bytes] = []

        def consumed_all() -> bool:
            seen.extend(m.key() for m in consumer.consume(100, 0.5) if m.error() is None)
            return len(seen) >= 100

        wait_for(consumed_all, timeout=20, message=lambda: f"100 records, got {len(seen)}")
        assert sorted(seen) == sorted(b"run-%d" % i for i in range(100))
    finally:
        consumer.close()
