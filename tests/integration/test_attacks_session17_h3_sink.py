"""Session 17 (H3, F7): one record past 100 MB on gov.decisions, through a real `baton sink`.

Tansu takes a record of any size (it ignores max.message.bytes). librdkafka never received a
fetch answer past its receive.message.max.bytes (100 MB by default): the sink logged "Invalid
response size", reconnected and fetched the same offset again, for ever, and no decision
after the record in its partition reached the audit. Now the sink's consumer takes answers
up to BATON_SINK_MAX_RECEIVE_BYTES (session 18: not 2 GiB, an answer costs ~2x its size in
memory); the record is rejected ``oversized`` (its head kept) and the decisions after it are
stored. A batch past the bound stalls its partition loudly and nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from baton.schemas.decision import Decision
from baton.sinks.rows import KEPT_BYTES
from baton.streams.embedded import EmbeddedBroker
from baton.streams.topics import TopicCatalog, ensure_topics
from tests.helpers import wait_for
from tests.stack import SinkProcess
from tests.unit.test_attacks_session9_audit import _published
from tests.unit.test_engine_support import handoff

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker of this module's own: Tansu keeps records in memory, the 101 MB one too."""
    broker = EmbeddedBroker(log_dir=tmp_path_factory.mktemp("tansu17"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _sink_behind_a_huge_record(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str, size: int, env: dict[str, str]
) -> tuple[SinkProcess, Decision, Decision]:
    """A sink of its own (``env``) on ``prefix``'s gov.decisions of one partition, which holds
    a decision, a record of ``size`` bytes and a decision, one record a batch."""
    catalog = TopicCatalog(prefix=prefix, partitions=1, replication=1)
    ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog, timeout=10)
    before, after = _published(
        [
            handoff("h1", "t1", "planner", "researcher", run_id="rs"),
            handoff("h2", "t2", "planner", "writer", run_id="rs"),
        ],
        "rs",
    )
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 1_000_000_000})
    errors: list[object] = []
    for value in (before.to_json(), b"x" * size, after.to_json()):
        producer.produce(
            catalog.decisions, value, partition=0, on_delivery=lambda e, m: errors.append(e)
        )
        producer.flush(60)  # one record a batch: each fetch answer holds one
    del producer
    assert errors == [None, None, None]
    sink = SinkProcess(
        broker.bootstrap,
        prefix,
        tmp_path / "chdb",
        tmp_path / "sink.log",
        partitions=1,
        extra_env=env,
    )
    return sink, before, after


def test_a_101_mb_record_on_gov_decisions_does_not_stop_the_sink(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    sink, before, after = _sink_behind_a_huge_record(
        own_broker, tmp_path, "s17sink.", 101_000_000, {}
    )
    try:
        sink.wait_ready()

        def stored() -> list[tuple[object, ...]] | None:
            rows = sink.query("SELECT decision_id FROM governance.decisions FINAL ORDER BY offset")
            return rows if len(rows) == 2 else None

        assert wait_for(stored, 90, message=sink.log) == [
            (before.decision_id,),
            (after.decision_id,),
        ]

        # a batch's decisions are inserted before its rejected records: wait for both
        def rejected_rows() -> list[tuple[object, ...]] | None:
            rows = sink.query(
                "SELECT audit_offset, error_kind, length(raw) FROM governance.rejected"
            )
            return rows or None

        rejected = wait_for(rejected_rows, 30, message=sink.log)
        assert [(int(o), kind, int(n)) for o, kind, n in rejected] == [(1, "oversized", KEPT_BYTES)]
        assert sink.alive(), sink.log()
    finally:
        sink.stop()


def test_a_batch_past_the_receive_bound_stalls_its_partition_loudly_and_skips_nothing(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Session 18 (H2, F7): the bound is ``BATON_SINK_MAX_RECEIVE_BYTES`` now (20 MB here, so
    the record stays cheap), not 2 GiB; a batch past it is not skipped (fail closed: Tansu
    answers a fetch at a readable offset with the readable records and the oversized batch
    together, so no offset can be named as unreadable): the stall is logged and counted."""
    env = {"BATON_SINK_MAX_RECEIVE_BYTES": "20000000"}
    sink, _, after = _sink_behind_a_huge_record(own_broker, tmp_path, "s18sink.", 25_000_000, env)
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


def test_a_101_mb_record_on_gov_stops_blinds_neither_the_alerter_nor_tail(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """H2 (session 27, F1): the alerter and `baton tail` read with librdkafka's 100 MB
    receive bound: one record past it on gov.stops had every fetch answer refused and the
    connection dropped; no stop of any partition was announced again, and tail hung."""
    import os
    import subprocess
    import sys

    prefix = "s27stops."
    catalog = TopicCatalog(prefix=prefix, partitions=1, replication=1)
    ensure_topics({"bootstrap.servers": own_broker.bootstrap}, catalog, timeout=10)
    stops = []
    for run in ("ra", "rb"):
        decided = _published(
            [
                handoff("h1", "t1", "planner", "researcher", run_id=run),
                handoff("h2", "t1", "planner", "writer", run_id=run),
            ],
            run,
        )
        stops += [d for d in decided if d.outcome == "stop"]
    assert len(stops) == 2
    producer = Producer(
        {"bootstrap.servers": own_broker.bootstrap, "message.max.bytes": 1_000_000_000}
    )
    for value in (stops[0].to_json(), b"x" * 101_000_000, stops[1].to_json()):
        producer.produce(catalog.stops, value, partition=0)
        assert producer.flush(60) == 0  # one record a batch
    del producer
    env = {
        **os.environ,
        "BATON_BOOTSTRAP": own_broker.bootstrap,
        "BATON_TOPIC_PREFIX": prefix,
        "BATON_PARTITIONS": "1",
        "BATON_APP_ID": "s27alerts",
    }
    tail = subprocess.run(
        [sys.executable, "-m", "baton.cli", "tail", "stops", "--from-beginning"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert len(lines) == 3 and "(not a Baton record) xxx" in lines[1], tail.stdout[:2000]
    assert "ra" in lines[0] and "rb" in lines[2] and len(tail.stdout) < 5_000
    log = tmp_path / "alerts.log"
    with open(log, "w") as out:
        alerts = subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "alerts", "--max-age", "0"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: "run rb stopped" in log.read_text() and "run ra stopped" in log.read_text(),
            90,
            message=lambda: log.read_text()[-3000:],
        )
    finally:
        alerts.terminate()
        alerts.wait(30)
    assert "too_large" in log.read_text()
