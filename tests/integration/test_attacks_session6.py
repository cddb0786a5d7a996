"""The sixth session's attack review on a real Tansu broker and `baton worker` process: a forged
run state on the changelog, restored by the worker, must not end it."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from baton.processors.state import RunState
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from tests.helpers import handoff, wait_for
from tests.stack import Collector, EventSender, WorkerProcess, fresh_topics, wait_deciding

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _forge_changelog(bootstrap: str, prefix: str, run: bytes, record: bytes) -> None:
    """Write ``record`` as ``run``'s state on the changelog of the worker of ``prefix``
    (tests/stack.py names its app ``baton-<prefix>``) before the worker starts."""
    changelog = f"baton-{prefix.rstrip('.')}-runs-changelog"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(changelog, PARTITIONS, 1, config={"cleanup.policy": "compact"})
    for future in admin.create_topics([topic]).values():
        future.result(10)
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(changelog, record, run, partition=partition_for(run, PARTITIONS))
    assert producer.flush(10) == 0


def test_a_worker_restoring_a_forged_state_with_a_text_time_keeps_deciding(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """A changelog record whose last event time is text: the restored run was due at once,
    and the sweep's arithmetic on it crashed the worker ("We experienced a crash", every
    restart again: no run of any tenant was decided). Now the worker logs the run as
    unreadable, decides the other runs, and the forged run's events are dead letters."""
    catalog = fresh_topics(broker.bootstrap, topic_prefix, PARTITIONS)
    wire = orjson.loads(RunState.new("forged-run", "default", time.time()).to_bytes())
    wire["t"] = "soon"
    _forge_changelog(broker.bootstrap, topic_prefix, b"forged-run", orjson.dumps(wire))
    decisions = Collector(broker.bootstrap, catalog.decisions)
    dead = Collector(broker.bootstrap, catalog.deadletter, decisions=False)
    worker = WorkerProcess(broker.bootstrap, topic_prefix, tmp_path, partitions=PARTITIONS)
    try:
        wait_deciding(broker.bootstrap, catalog, 90)
        wait_for(lambda: "stored state cannot be read" in worker.log(), 30, message="the log")
        EventSender(broker.bootstrap, catalog.requests).send(
            [handoff("forged-run", 1, "t1"), handoff("good-run", 1, "t1")]
        )
        decisions.wait_run("good-run", 1)
        kinds = wait_for(
            lambda: [orjson.loads(r)["error_kind"] for r in dead.records],  # type: ignore[arg-type]
            30,
            message="the forged run's dead letter",
        )
        assert kinds == ["state_unreadable"]
        assert worker.alive(), worker.log()
        assert "crash" not in worker.log().lower(), worker.log()
    finally:
        worker.stop()
        decisions.close()
        dead.close()
