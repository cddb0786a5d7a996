"""A forged run state whose last event is at 1e300, restored by a real `baton worker` from the
changelog on Tansu: the run used to stay in the worker's memory for good (never due, never
evicted); now the sweep sets its times to the worker's clock, keeps its stop, and the run
leaves the table after its retention like any other."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from baton.processors.state import RunState
from baton.schemas.decision import Outcome
from baton.streams.embedded import EmbeddedBroker
from tests.helpers import handoff, wait_for
from tests.integration.test_attacks_session6 import PARTITIONS, _forge_changelog
from tests.stack import Collector, EventSender, WorkerProcess, fresh_topics, wait_deciding

pytestmark = pytest.mark.integration


def test_a_restored_run_whose_last_event_is_at_1e300_keeps_its_stop_and_is_evicted(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    catalog = fresh_topics(broker.bootstrap, topic_prefix, PARTITIONS)
    start = time.time()
    wire = orjson.loads(RunState.new("forged-run", "default", start).to_bytes())
    wire.update(t=1e300, stop="handoff_budget_exceeded", usd=3.5)
    _forge_changelog(broker.bootstrap, topic_prefix, b"forged-run", orjson.dumps(wire))
    changelog = f"baton-{topic_prefix.rstrip('.')}-runs-changelog"
    reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"r-{changelog}"})
    reader.assign([TopicPartition(changelog, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    seen: list[dict[str, Any] | None] = []
    decisions = Collector(broker.bootstrap, catalog.decisions)
    retention = {"BATON_RUN_RETENTION_S": "4", "BATON_TOMBSTONE_RETENTION_S": "4"}
    worker = WorkerProcess(
        broker.bootstrap, topic_prefix, tmp_path, partitions=PARTITIONS, extra_env=retention
    )
    try:
        wait_deciding(broker.bootstrap, catalog, 90)

        def states() -> list[dict[str, Any] | None]:
            """The forged run's records so far (the readiness probe's runs are there too)."""
            while (msg := reader.poll(0.2)) is not None:
                if not msg.error() and msg.key() == b"forged-run":
                    value = msg.value()
                    seen.append(None if value is None else orjson.loads(value))
            return seen

        # the sweep wrote the run again with the worker's time, its stop and spend kept
        fixed = wait_for(
            lambda: [s for s in states() if s is not None and s["t"] != 1e300],
            30,
            message=lambda: f"the run rewritten: {states()}; {worker.log()}",
        )[0]
        assert start <= fixed["t"] <= time.time()
        assert (fixed["stop"], fixed["usd"]) == ("handoff_budget_exceeded", 3.5)
        assert "stored times past the worker's clock" in worker.log()
        EventSender(broker.bootstrap, catalog.requests).send([handoff("forged-run", 1, "t1")])
        [late] = decisions.wait_run("forged-run", 1)
        assert (late.outcome, late.reason) == (Outcome.STOP, "handoff_budget_exceeded")
        # a tombstone after the retention, then forgotten: the run left the worker's table
        wait_for(
            lambda: states()[-1] is None,
            60,
            message=lambda: f"the run deleted from the changelog: {states()}; {worker.log()}",
        )
        assert any(s is not None and s.get("ev") for s in states())  # it was a tombstone first
        assert worker.alive(), worker.log()
    finally:
        worker.stop()
        reader.close()
        decisions.close()
