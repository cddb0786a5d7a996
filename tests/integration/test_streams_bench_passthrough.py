"""The passthrough baseline the worker benchmark reuses moves every record, key and value intact."""

from __future__ import annotations

from collections import Counter

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from baton.schemas.events import parse_event
from baton.streams.embedded import EmbeddedBroker
from baton.streams.kafka import admin_config
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog, ensure_topics
from bench.passthrough import make_handoff_requests, preload, run_passthrough
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def test_passthrough_copies_every_event_to_its_run_partition(
    broker: EmbeddedBroker, topic_prefix: str
) -> None:
    catalog = TopicCatalog(prefix=topic_prefix, partitions=4)
    ensure_topics(admin_config({"bootstrap.servers": broker.bootstrap}), catalog, timeout=10)
    events = make_handoff_requests(2_000, runs=300)
    assert all(parse_event(value, key).run_id == key.decode() for key, value in events)
    preload(broker.bootstrap, catalog.requests, events)

    result = run_passthrough(
        broker.bootstrap, catalog.requests, catalog.decisions, len(events), batch=500
    )
    assert result["events"] == 2_000 and result["events_per_s"] > 0

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": topic_prefix})
    copied: Counter[tuple[bytes, bytes]] = Counter()
    try:
        consumer.assign([TopicPartition(catalog.decisions, p, OFFSET_BEGINNING) for p in range(4)])

        def read_all() -> bool:
            for msg in consumer.consume(1000, 0.5):
                assert msg.error() is None
                assert msg.partition() == partition_for(msg.key(), 4)  # murmur2, like Faust
                copied[(msg.key(), msg.value())] += 1
            return sum(copied.values()) >= len(events)

        wait_for(read_all, timeout=20, message=lambda: f"2000 copies, got {copied.total()}")
    finally:
        consumer.close()
    assert copied == Counter(events)
