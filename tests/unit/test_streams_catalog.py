"""The topic catalog names and sizes every topic in one place; producers always use murmur2."""

from __future__ import annotations

import pytest

from baton.schemas.settings import Settings
from baton.streams.kafka import consumer_config, producer_config
from baton.streams.topics import TopicCatalog

pytestmark = pytest.mark.unit


def test_catalog_prefixes_every_name_and_co_partitions_the_run_topics() -> None:
    catalog = TopicCatalog(prefix="staging.", partitions=12, replication=1)
    counts = {spec.name: spec.partitions for spec in catalog.specs()}
    assert counts == {
        "staging.gov.handoff.requests": 12,
        "staging.gov.approvals": 12,
        "staging.gov.decisions": 12,
        "staging.gov.stops": 12,
        "staging.gov.control": 1,
        "staging.gov.deadletter": 12,
    }
    assert catalog.requests == "staging.gov.handoff.requests"
    assert catalog.control == "staging.gov.control"


def test_catalog_from_settings() -> None:
    settings = Settings(topic_prefix="p.", partitions=3, replication_factor=3)
    catalog = TopicCatalog.from_settings(settings)
    assert (catalog.prefix, catalog.partitions, catalog.replication) == ("p.", 3, 3)
    # three replicas: acks=all must mean two copies
    assert all(spec.config["min.insync.replicas"] == "2" for spec in catalog.specs())


def test_catalog_rejects_zero_partitions() -> None:
    with pytest.raises(ValueError, match="partitions: must be >= 1, got 0"):
        TopicCatalog(partitions=0)


def test_producer_config_always_uses_murmur2() -> None:
    base = Settings(bootstrap="k:9092").kafka_config()
    conf = producer_config(base, {"linger.ms": 0})
    assert conf["partitioner"] == "murmur2_random"
    assert conf["linger.ms"] == 0
    assert conf["bootstrap.servers"] == "k:9092"
    with pytest.raises(ValueError, match="must be 'murmur2_random'"):
        producer_config(base, {"partitioner": "consistent_random"})


def test_consumer_config_starts_at_earliest_and_commits_manually() -> None:
    conf = consumer_config(Settings().kafka_config(), "baton-sink")
    assert conf["group.id"] == "baton-sink"
    assert conf["auto.offset.reset"] == "earliest"
    assert conf["enable.auto.commit"] is False
