"""Session 18 (H2, F7): a record batch past the sink's receive bound, through a real `baton sink`.

The bound (``BATON_SINK_MAX_RECEIVE_BYTES``, 20 MB here so the record stays cheap) keeps one
fetch answer's memory bounded; a batch past it is not skipped (fail closed: Tansu answers a
fetch at a readable offset with the readable records and the oversized batch together, so
no offset can be named as unreadable), the stall is logged and counted instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from baton.streams.embedded import EmbeddedBroker
from baton.streams.topics import TopicCatalog, ensure_topics
from tests.helpers import wait_for
from tests.stack import SinkProcess
from tests.unit.test_attacks_session9_audit import _published
from tests.unit.test_engine_support import handoff

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker of this module's own: Tansu keeps records in memory, the 25 MB one too."""
    broker = EmbeddedBroker(log_dir=tmp_path_factory.mktemp("tansu18"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_batch_past_the_receive_bound_stalls_its_partition_loudly_and_skips_nothing(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    prefix = "s18sink."
    catalog = TopicCatalog(prefix=prefix, partitions=1, replication=1)
    ensure_topics({"bootstrap.servers": own_broker.bootstrap}, catalog, timeout=10)
    before, after = _published(
        [
            handoff("h1", "t1", "planner", "researcher", run_id="rs"),
            handoff("h2", "t2", "planner", "writer", run_id="rs"),
        ],
        "rs",
    )
    producer = Producer(
        {"bootstrap.servers": own_broker.bootstrap, "message.max.bytes": 30_000_000}
    )
    errors: list[object] = []
    for value in (before.to_json(), b"x" * 25_000_000, after.to_json()):
        producer.produce(
            catalog.decisions, value, partition=0, on_delivery=lambda e, m: errors.append(e)
        )
        producer.flush(30)  # one record a batch
    del producer
    assert errors == [None, None, None]
    sink = SinkProcess(
        own_broker.bootstrap,
        prefix,
        tmp_path / "chdb",
        tmp_path / "sink.log",
        partitions=1,
        extra_env={"BATON_SINK_MAX_RECEIVE_BYTES": "20000000"},
    )
    try:
        sink.wait_ready()
        stalled = "a fetch answer past BATON_SINK_MAX_RECEIVE_BYTES"
        wait_for(lambda: stalled in sink.log(), 30, message=sink.log)
        log = sink.log()
        assert "Invalid response size" in log and "(0..20000000)" in log, log
        # nothing skipped: the records after the batch (and, on Tansu, the one before it, in the
        # same answer) wait for a raised bound; none is rejected in their place
        ids = sink.query("SELECT decision_id FROM governance.decisions")
        assert (after.decision_id,) not in ids
        assert sink.query("SELECT count() FROM governance.rejected")[0][0] == 0
        assert sink.alive(), sink.log()
    finally:
        sink.stop()
