"""The publisher without a broker: what librdkafka refuses locally must not end the worker."""

from __future__ import annotations

import orjson
import pytest

from baton.processors.batch import DeadLetter
from baton.processors.publish import BatchPublisher

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
    before = len(publisher._producer)
    publisher.produce_dead_letter(DeadLetter(b"run", huge))  # librdkafka refuses > 1 MB
    assert len(publisher._producer) == before + 1  # the short one is queued instead
