"""The thirtieth session's attacks on the runs changelog (H1, session 30), on a real Tansu broker
and `baton worker` process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from baton.streams.embedded import EmbeddedBroker
from tests.helpers import handoff, wait_for
from tests.stack import Collector, EventSender, WorkerProcess, fresh_topics, wait_deciding

pytestmark = pytest.mark.integration

PARTITIONS = 2


def _changelog(bootstrap: str, prefix: str) -> str:
    """The worker's changelog (tests/stack.py names its app ``baton-<prefix>``), created."""
    changelog = f"baton-{prefix.rstrip('.')}-runs-changelog"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(changelog, PARTITIONS, 1, config={"cleanup.policy": "compact"})
    for future in admin.create_topics([topic]).values():
        future.result(10)
    return changelog


def test_a_changelog_record_without_a_key_is_ignored_and_the_worker_keeps_deciding(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """A key-less record on the changelog was restored under the key None; the sweep's
    partition_for(None) raised ~10 s after each start and `baton up` gave up after five
    exits. Now the record is dropped with a warning and the worker goes on deciding."""
    catalog = fresh_topics(broker.bootstrap, topic_prefix, PARTITIONS)
    changelog = _changelog(broker.bootstrap, topic_prefix)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for partition in range(PARTITIONS):
        producer.produce(changelog, b'{"v": 4}', None, partition=partition)
    assert producer.flush(10) == 0
    decisions = Collector(broker.bootstrap, catalog.decisions)
    worker = WorkerProcess(broker.bootstrap, topic_prefix, tmp_path, partitions=PARTITIONS)
    try:
        wait_deciding(broker.bootstrap, catalog, 90)
        wait_for(lambda: "without a run id" in worker.log(), 30, message="the warning")
        time.sleep(12)  # the sweep that raised ran within ~10 s of the start
        EventSender(broker.bootstrap, catalog.requests).send([handoff("after-run", 1, "t1")])
        decisions.wait_run("after-run", 1)
        assert worker.alive(), worker.log()
        assert "Traceback" not in worker.log(), worker.log()
    finally:
        worker.stop()
        decisions.close()
