"""Session 17's attacks on `baton replay --from-kafka` through a real Tansu broker (the
session's broker, a prefix of its own): a run whose records a producer stamped against their
offset order, and `--tenant` scoping a record by its own tenant field instead of its run's.
Both passed the gate ("no change", exit 0) on a history the worker never had (the first made
its run partial in session 17; it is decided in offset order since session 18). The pure parts:
tests/unit/test_attacks_session17_replay_kafka.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from baton.schemas.events import RunEvent
from baton.streams.embedded import EmbeddedBroker
from baton.streams.topics import TopicCatalog, ensure_topics
from tests.replay_support import replay_from_kafka
from tests.unit.test_engine_support import completed, handoff

pytestmark = pytest.mark.integration

PREFIX = "s17kafka"
BASELINE = "multi_agent:\n  max_handoffs: 2\n  shared_max_usd: 10\n  tools: {block: []}\n"
NEW = "multi_agent:\n  max_handoffs: 2\n  shared_max_usd: 5\n  tools: {block: ['shell.*']}\n"


def test_a_run_stamped_against_its_offsets_and_a_tenant_scoped_by_run(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Partition 0 holds, in this offset order: run ra (acme), three handoffs stamped
    backwards, the first using shell.exec (the worker allowed it; the replay decided it
    last, stopped by max_handoffs, so blocking shell.* was no change); run rc (acme), a
    handoff, its 9 USD completion naming tenant other (counted by the worker; dropped by
    `--tenant acme`, so shared_max_usd 5 was no change) and a second handoff; run rb
    (other), whose second record names acme (refused by the worker; replayed alone as an
    acme run). Now: ra (decided in offset order, as the worker did: blocking shell.* stops
    its first handoff) and rc are changes (exit 1), rb is out of scope."""
    base = int(datetime.now(UTC).timestamp() * 1000) - 60_000
    ra = [
        handoff(f"ra-h{n}", f"t{n}", "planner", "researcher", run_id="ra", tenant="acme", **kw)
        for n, kw in enumerate([{"tools": ["shell.exec"]}, {}, {}])
    ]
    rc: list[RunEvent] = [
        handoff("rc-h0", "t0", "planner", "researcher", run_id="rc", tenant="acme"),
        completed("rc-h0", "t0", "researcher", 9.0, run_id="rc", tenant="other"),
        handoff("rc-h1", "t1", "planner", "researcher", run_id="rc", tenant="acme"),
    ]
    rb = [
        handoff("rb-h0", "t0", "planner", "researcher", run_id="rb", tenant="other"),
        handoff("rb-h1", "t1", "planner", "researcher", run_id="rb", tenant="acme"),
    ]
    stamped = [(e, base + 3_000 - 1_000 * n) for n, e in enumerate(ra)]
    stamped += [(e, base + 10_000 + 1_000 * n) for n, e in enumerate([*rc, *rb])]
    catalog = TopicCatalog(prefix=PREFIX, partitions=1, replication=1)
    ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog, timeout=10)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for event, stamp in stamped:
        producer.produce(
            catalog.requests,
            key=event.run_id.encode(),
            value=event.to_json(),
            partition=0,
            timestamp=stamp,
        )
    assert producer.flush(10) == 0

    (tmp_path / "baseline.yaml").write_text(BASELINE)
    (tmp_path / "new.yaml").write_text(NEW)
    done = replay_from_kafka(
        broker.bootstrap,
        PREFIX,
        1,
        tmp_path / "new.yaml",
        tmp_path / "baseline.yaml",
        *("--format", "json", "--tenant", "ACME"),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    report = orjson.loads(done.stdout)
    assert [c["run_id"] for c in report["changes"]] == ["ra", "rc"], report
    assert not {"ra", "rb"} & set(report["partial"]), report
    assert not report["broken"] and report["faithful"], report
