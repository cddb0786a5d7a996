"""`baton replay --from-kafka` reads gov.control as the workers' control follower does
(read_uncommitted, since session 10): a transaction a writer left open there (Tansu never
aborts it) held a read_committed reader's end at its first record, so a kill switch after it
was missing from the replay: the run's handoffs replayed as allowed under the baseline, and a
stricter policy showed as a change where the worker had stopped them all (killed)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from baton.schemas.events import KillSwitch
from baton.streams.embedded import EmbeddedBroker
from baton.streams.topics import TopicCatalog, ensure_topics
from tests.replay_support import replay_from_kafka
from tests.stack import open_transaction
from tests.unit.test_engine_support import handoff

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_dir=tmp_path_factory.mktemp("tansu")) as running:
        yield running


def test_a_kill_switch_after_a_transaction_left_open_is_replayed(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}"
    catalog = TopicCatalog(prefix=prefix, partitions=1, replication=1)
    ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog, timeout=10)
    attacker = open_transaction(broker.bootstrap, catalog.control, 0)  # noqa: F841 (kept open)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    kill = KillSwitch(scope="run", run_id="rk", operator="op", event_time=datetime.now(UTC))
    producer.produce(catalog.control, key=b"rk", value=kill.to_json(), partition=0)
    assert producer.flush(10) == 0
    time.sleep(0.01)  # the handoffs are stamped after the kill
    for n in range(6):
        event = handoff(f"rk-h{n}", f"t{n}", "planner", "researcher", run_id="rk")
        producer.produce(catalog.requests, key=b"rk", value=event.to_json(), partition=0)
    assert producer.flush(10) == 0
    (tmp_path / "stricter.yaml").write_text("multi_agent:\n  max_handoffs: 4\n")
    (tmp_path / "baseline.yaml").write_text("multi_agent:\n  max_handoffs: 20\n")
    done = replay_from_kafka(
        broker.bootstrap,
        prefix,
        1,
        tmp_path / "stricter.yaml",
        tmp_path / "baseline.yaml",
        *("--format", "json"),
    )
    # every handoff of rk was killed under either policy: nothing changes (exit 0); with the
    # kill hidden, the stricter policy's stop of the fifth handoff was a change (exit 1)
    assert done.returncode == 0, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    report = orjson.loads(done.stdout)
    assert report["decisions"] == 6, report
