"""The changelog read before Faust's recovery (processors/faust_restore.py), on a real broker:
each key's last record, a record without a value kept as a deletion, the last offset of
each partition read from its start, and nothing claimed past the bounds."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from baton.processors.faust_restore import read_changelog
from baton.streams.embedded import EmbeddedBroker

pytestmark = pytest.mark.integration


def _topic(broker: EmbeddedBroker, records: list[tuple[int, bytes | None, bytes | None]]) -> str:
    topic = f"restore-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for partition, key, value in records:
        producer.produce(topic, value, key, partition=partition)
        producer.flush(10)  # one batch a record: offsets 0, 1, 2 ... per partition
    return topic


def test_each_key_ends_at_its_last_record_and_a_deletion_is_kept(broker: EmbeddedBroker) -> None:
    topic = _topic(
        broker,
        [(0, b"a", b"a1"), (0, b"b", b"b1"), (0, b"a", b"a2"), (0, b"b", None), (1, b"c", b"c1")],
    )
    config = {"bootstrap.servers": broker.bootstrap}
    latest, last = read_changelog(config, topic, {0: 4, 1: 1})
    assert latest == {b"a": (0, b"a2"), b"b": (0, None), b"c": (1, b"c1")}
    assert last == {0: 3, 1: 0}
    # an end short of the log: nothing past it is applied or claimed
    latest, last = read_changelog(config, topic, {0: 2})
    assert latest == {b"a": (0, b"a1"), b"b": (0, b"b1")} and last == {0: 1}
    # nothing to read: nothing claimed
    assert read_changelog(config, topic, {0: 0, 1: 0}) == ({}, {})


def test_a_read_out_of_time_claims_only_what_it_applied(broker: EmbeddedBroker) -> None:
    topic = _topic(broker, [(0, b"a", b"a1"), (0, b"a", b"a2")])
    config = {"bootstrap.servers": broker.bootstrap}
    latest, last = read_changelog(config, topic, {0: 2}, max_s=0.0)
    assert latest == {} and last == {}
    # an end past what the partition holds (the committed end cannot be): read to its end,
    # stopped by the stall bound, the prefix claimed
    latest, last = read_changelog(config, topic, {0: 5}, stall_s=2.0)
    assert latest == {b"a": (0, b"a2")} and last == {0: 1}
