"""The consumer-group metadata Baton writes for transactions is byte-for-byte librdkafka's."""

from __future__ import annotations

import struct

import pytest
from confluent_kafka import Consumer

from baton.streams.transactions import consumer_group_metadata


@pytest.mark.parametrize("instance", [None, "worker-a"])
def test_metadata_matches_what_a_confluent_consumer_hands_out(instance: str | None) -> None:
    conf = {"group.id": "baton-app", "bootstrap.servers": "127.0.0.1:1", "log_level": 0}
    if instance is not None:
        conf["group.instance.id"] = instance
    consumer = Consumer(conf)
    try:
        expected = consumer.consumer_group_metadata()  # not joined: generation -1, no member
    finally:
        consumer.close()
    assert consumer_group_metadata("baton-app", -1, "", instance) == expected


def test_metadata_carries_generation_and_member() -> None:
    raw = consumer_group_metadata("g", 7, "faust-0.15-abc")
    assert raw.startswith(b"CGMDv2:")
    assert struct.unpack("=i", raw[7:11]) == (7,)
    assert raw[11:] == b"g\0faust-0.15-abc\0\x01"


@pytest.mark.parametrize(
    "now",
    [
        ("baton-app", 4, "m-1"),  # a rebalance moved the group on
        ("baton-app", -1, ""),  # expelled: aiokafka reset the membership (Kafka checks nothing)
        ("baton-app", 3, "m-2"),  # rejoined as another member
    ],
)
def test_a_batch_commits_only_under_the_membership_it_was_fetched_in(now) -> None:
    from types import SimpleNamespace

    from baton.processors.app import GovernanceWorker

    fetched_in = ("baton-app", 3, "m-1")
    worker = SimpleNamespace(_membership=lambda: now)
    with pytest.raises(RuntimeError, match="membership changed"):
        GovernanceWorker._group_metadata(worker, fetched_in)  # type: ignore[arg-type]
    same = SimpleNamespace(_membership=lambda: fetched_in)
    assert GovernanceWorker._group_metadata(same, fetched_in) == consumer_group_metadata(  # type: ignore[arg-type]
        "baton-app", 3, "m-1"
    )
