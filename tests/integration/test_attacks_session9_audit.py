"""Session 9's attacks on `baton replay --from-kafka` through a real Tansu broker: record
timestamps are the producer's (any int64), and a run's history may begin before `--since`."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from baton.schemas.decision import Decision
from baton.streams.embedded import EmbeddedBroker
from baton.streams.topics import TopicCatalog, ensure_topics
from tests.audit_support import produce_decisions
from tests.helpers import wait_for
from tests.replay_support import replay_from_kafka
from tests.stack import SinkProcess
from tests.unit.test_attacks_session9_audit import _published
from tests.unit.test_engine_support import handoff

pytestmark = pytest.mark.integration

PREFIX = "s9audit"
STRICTER = "multi_agent:\n  max_handoffs: 4\n"
BASELINE = "multi_agent:\n  max_handoffs: 20\n"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_dir=tmp_path_factory.mktemp("tansu")) as running:
        yield running


def _produce(bootstrap: str, records: list[tuple[str, int, int]]) -> None:
    """(run, handoff number, timestamp ms) as handoff requests, in this order, partition 0."""
    catalog = TopicCatalog(prefix=PREFIX, partitions=1, replication=1)
    ensure_topics({"bootstrap.servers": bootstrap}, catalog, timeout=10)
    producer = Producer({"bootstrap.servers": bootstrap})
    for run, n, stamp in records:
        event = handoff(f"{run}-h{n}", f"t{n}", "planner", "researcher", run_id=run)
        producer.produce(
            catalog.requests, key=run.encode(), value=event.to_json(), partition=0, timestamp=stamp
        )
    assert producer.flush(10) == 0


def _replay(bootstrap: str, workdir: Path, *bounds: str) -> subprocess.CompletedProcess[str]:
    (workdir / "stricter.yaml").write_text(STRICTER)
    (workdir / "baseline.yaml").write_text(BASELINE)
    return replay_from_kafka(
        bootstrap,
        PREFIX,
        1,
        workdir / "stricter.yaml",
        workdir / "baseline.yaml",
        *("--format", "json", *bounds),
    )


def test_hostile_record_timestamps_and_a_run_begun_before_since(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """One partition holds: run ra, six handoffs, three stamped before --since and three in
    the range (max_handoffs 4 stops its fifth: a change the range alone cannot show); run rx,
    one handoff stamped 10**15 ms (year 33658: the replay ended with a ValueError); a record
    stamped past --to amid the partition (it ended the partition's read, so run rb's five
    handoffs after it, a change, were never replayed). Now: ra is replayed from its first
    handoff (every record of it is read: session 19; it was partial, cut by the range), a
    change, as rb is; rx and rz, stamped ahead of the read, are broken (when they
    were decided is unknown: exit 7, since session 18), with or without --to; no traceback."""
    now = datetime.now(UTC)
    since, until = now - timedelta(minutes=30), now + timedelta(minutes=30)

    def ms(at: datetime) -> int:
        return int(at.timestamp() * 1000)

    records = [("ra", n, ms(since - timedelta(minutes=10 - n))) for n in range(3)]
    records += [("ra", n, ms(since + timedelta(minutes=n))) for n in range(3, 6)]
    records += [("rx", 0, 10**15), ("rz", 0, ms(until + timedelta(days=1)))]
    records += [("rb", n, ms(since + timedelta(minutes=10 + n))) for n in range(5)]
    _produce(broker.bootstrap, records)

    bounded = _replay(
        broker.bootstrap, tmp_path, "--since", since.isoformat(), "--to", until.isoformat()
    )
    report = orjson.loads(bounded.stdout)
    assert [c["run_id"] for c in report["changes"]] == ["ra", "rb"], report
    assert "ra" not in report["partial"] and "ra" not in report["broken"], report
    # stamped ahead of the read, rx and rz move no clock (rb after them stays in the range)
    # and cannot be decided: broken, exit 7
    assert sorted(report["broken"]) == ["rx", "rz"] and report["faithful"], report
    assert bounded.returncode == 7, bounded.stdout + bounded.stderr

    open_ended = _replay(broker.bootstrap, tmp_path, "--since", since.isoformat())
    assert "Traceback" not in open_ended.stderr, open_ended.stderr[-2000:]
    report = orjson.loads(open_ended.stdout)
    assert {"rx", "rz"} <= set(report["partial"]) and "ra" not in report["partial"], report
    assert sorted(report["broken"]) == ["rx", "rz"], report
    assert [c["run_id"] for c in report["changes"]] == ["ra", "rb"], report


def test_a_real_sink_keeps_a_forged_answer_flagged_reemitted_and_folds_the_workers_copy(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Through `baton sink` (its consumer loop, parse processes and chDB): the worker's allow,
    the worker's copy of it (a client retry, flagged reemitted) and a forged allow flagged
    reemitted for another request. The copy folds away; the forged one, which the sink used
    to drop unread, is in governance.rejected as not_a_copy; the sink keeps running."""
    prefix = "s9sink."
    catalog = TopicCatalog(prefix=prefix, partitions=1, replication=1)
    ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog, timeout=10)
    (allow,) = _published([handoff("h1", "t1", "planner", "researcher", run_id="rs")], "rs")
    copy = Decision.from_json(allow.to_json())
    copy.reemitted = True
    forged = Decision.from_json(copy.to_json())
    forged.decision_id, forged.request_id = "f" * 32, "h2"
    sink = SinkProcess(
        broker.bootstrap, prefix, tmp_path / "chdb", tmp_path / "sink.log", partitions=1
    )
    try:
        sink.wait_ready()
        produce_decisions(broker.bootstrap, catalog.decisions, [allow, copy, forged])

        def rejected() -> list[tuple[object, ...]]:
            rows = sink.query("SELECT audit_offset, error_kind FROM governance.rejected")
            return rows or None  # type: ignore[return-value]

        kept = wait_for(rejected, 60, message=sink.log)
        assert [(int(o), kind) for o, kind in kept] == [(2, "not_a_copy")], kept
        stored = sink.query("SELECT decision_id FROM governance.decisions FINAL")
        assert stored == [(allow.decision_id,)] and sink.alive(), sink.log()
    finally:
        sink.stop()
