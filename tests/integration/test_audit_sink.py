"""The audit sink on the real Tansu broker and real chDB: exact audit despite duplicates."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import OperationalError

from baton.schemas.settings import Settings
from baton.sinks.clickhouse import connect
from baton.sinks.schema import migrate
from baton.sinks.sink import AuditSink, run_sink
from tests.audit_support import (
    create_topic,
    hostile_records,
    produce_decisions,
    produce_records,
    scenario_decisions,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


@pytest.fixture
def sink_env(broker: Any, chdb_dir: Path, topic_prefix: str) -> Iterator[dict[str, Any]]:
    """A running in-process sink on a fresh topic and chDB dir; stopped after the test."""
    topic = f"{topic_prefix}gov.decisions"
    create_topic(broker.bootstrap, topic, partitions=4)
    settings = Settings(
        bootstrap=broker.bootstrap,
        clickhouse_dsn=f"chdb://{chdb_dir}",
        topic_prefix=topic_prefix,
        sink_batch_size=40,
        sink_batch_timeout_s=0.2,
    )
    stop = threading.Event()
    ready = threading.Event()
    box: dict[str, Any] = {}

    def on_ready(sink: Any, server: Any) -> None:
        box["sink"], box["server"] = sink, server
        ready.set()

    def target() -> None:
        try:
            box["stats"] = run_sink(
                settings,
                stop,
                sql_port=0,
                topic=topic,
                consumer_overrides=FAST_GROUP,
                on_ready=on_ready,
            )
        except BaseException as exc:  # surfaced by the test below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=target, name="audit-sink", daemon=True)
    thread.start()
    assert ready.wait(60), "sink did not start"
    assert "error" not in box, box.get("error")
    # same process, same engine: a second client shares it (chDB allows that)
    client = connect(settings.clickhouse_dsn)
    try:
        yield {
            "topic": topic,
            "settings": settings,
            "client": client,
            "box": box,
            "thread": thread,
        }
    finally:
        client.close()
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "sink did not stop"


def _scalar(client: Client, sql: str) -> Any:
    return client.query(sql).result_rows[0][0]


def test_every_decision_appears_exactly_once_despite_redelivered_copies(
    broker: Any, sink_env: dict[str, Any]
) -> None:
    client: Client = sink_env["client"]
    # decided a minute ago: the audit keeps decided_at within its retention of the sink's clock
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    decisions = scenario_decisions(runs=30, start=start)
    unique = {d.decision_id for d in decisions}
    sent = produce_decisions(broker.bootstrap, sink_env["topic"], decisions, duplicate_every=3)
    assert sent > len(unique)

    wait_for(
        lambda: _scalar(client, "SELECT count() FROM governance.decisions FINAL") == len(unique),
        timeout=60,
        message="every decision in the audit",
    )
    wait_for(
        lambda: sink_env["box"]["sink"].stats.rows == sent,
        timeout=20,
        message=lambda: f"sink wrote all {sent} records, stats={sink_env['box']['sink'].stats}",
    )
    stored = {
        r[0]: r
        for r in client.query(
            "SELECT decision_id, run_id, reason, toString(spent_usd), owner "
            "FROM governance.decisions FINAL"
        ).result_rows
    }
    assert set(stored) == unique
    seed_stop = next(
        d for d in decisions if d.run_id == "run_742" and d.reason == "ownership_conflict"
    )
    assert stored[seed_stop.decision_id][1:] == ("run_742", "ownership_conflict", "0.25", "billing")
    # copies were written (no FINAL sees them until a merge) but never counted twice
    assert _scalar(client, "SELECT count() FROM governance.decisions") >= len(unique)
    assert _scalar(client, "SELECT uniqExact(decision_id) FROM governance.decisions") == len(unique)
    assert _scalar(client, "SELECT count() FROM governance.rejected") == 0
    assert _scalar(client, "SELECT min(event_time) FROM governance.decisions").replace(
        tzinfo=None
    ) >= start.replace(tzinfo=None)


# --------------------------------------------------------------------------- ClickHouse down


class FlakyClickHouse:
    """A real chDB client whose inserts fail while ``down`` is set, as an unreachable server's
    would (clickhouse-connect raises OperationalError)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.down = threading.Event()
        self.refused = 0

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        if self.down.is_set():
            self.refused += 1
            raise OperationalError("HTTPConnectionPool(host='ch', port=8123): Connection refused")
        return self.client.insert(*args, **kwargs)

    def query(self, *args: Any, **kwargs: Any) -> Any:  # the sink reads the column types
        return self.client.query(*args, **kwargs)


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def test_while_clickhouse_is_down_the_sink_retries_and_commits_nothing(
    broker: Any, chdb_dir: Path, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}gov.decisions"
    create_topic(broker.bootstrap, topic, partitions=2)
    client = connect(f"chdb://{chdb_dir}")
    migrate(client, ttl_days=30)
    flaky = FlakyClickHouse(client)
    flaky.down.set()
    group = f"{topic_prefix}audit"
    sink = AuditSink(
        {"bootstrap.servers": broker.bootstrap},
        flaky,
        topic,  # type: ignore[arg-type]
        group_id=group,
        batch_size=50,
        batch_timeout_s=0.1,
        consumer_overrides=FAST_GROUP,
        backoff=lambda attempt: 0.2,
    )
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    try:
        decisions = scenario_decisions(runs=20, start=datetime.now(UTC) - timedelta(minutes=1))
        sent = produce_decisions(broker.bootstrap, topic, decisions)
        wait_for(lambda: flaky.refused >= 5, timeout=30, message="inserts refused while down")
        assert _scalar(client, "SELECT count() FROM governance.decisions") == 0
        assert _committed(broker.bootstrap, group, topic, 2) == 0  # nothing acknowledged
        assert sink.stats.last_error and "unreachable" in sink.stats.last_error

        flaky.down.clear()  # ClickHouse is back
        wait_for(
            lambda: _committed(broker.bootstrap, group, topic, 2) == sent,
            timeout=30,
            message="every offset committed once stored",
        )
        assert _scalar(client, "SELECT count() FROM governance.decisions FINAL") == len(decisions)
        # per partition, rows went in in offset order: the first batch (retried many times)
        # holds the lowest offsets
        order = client.query(
            "SELECT audit_partition, groupArray(audit_offset) FROM (SELECT audit_partition, "
            "audit_offset FROM governance.decisions ORDER BY inserted_at, audit_offset) "
            "GROUP BY audit_partition"
        ).result_rows
        for partition, offsets in order:
            assert offsets == sorted(offsets), f"partition {partition} out of order"
        assert sink.stats.retries >= 5 and sink.stats.rows == sent
    finally:
        stop.set()
        thread.join(30)
        client.close()


# --------------------------------------------------------------------------- hostile records


def test_hostile_records_go_to_rejected_and_every_good_decision_is_stored(
    broker: Any, sink_env: dict[str, Any]
) -> None:
    client: Client = sink_env["client"]
    # a refusal only the server knows, for the sink to find by splitting its inserts
    client.command("ALTER TABLE governance.decisions ADD CONSTRAINT no_evil CHECK tenant != 'evil'")
    now = datetime.now(UTC).replace(microsecond=0)
    good = scenario_decisions(runs=12, start=now - timedelta(minutes=5))
    # what a client may say about time is kept as a column, whatever it is
    good[0] = replace(good[0], event_time=datetime(1971, 1, 1, tzinfo=UTC))
    good[1] = replace(good[1], event_time=datetime(2299, 1, 1, tzinfo=UTC))
    good[2] = replace(good[2], reason="r" * 60_000, tenant="t" * 60_000)
    for i in range(3, len(good)):  # event times over 20 years: no partition explosion
        good[i] = replace(good[i], event_time=now - timedelta(days=31 * i))
    hostile = hostile_records(replace(good[5], decided_at=now))
    records: list[tuple[bytes | None, bytes | None]] = []
    expected: list[str | None] = []  # the error_kind of each record, None for a good one
    bad = iter(hostile * 3)  # each hostile record three times, spread over the stream
    for i, decision in enumerate(good):
        records.append((decision.run_id.encode(), decision.to_json()))
        expected.append(None)
        if i % 2 == 0:
            key, value, kind = next(bad, (None, None, ""))
            if kind:
                records.append((key, value))
                expected.append(kind)
    landed = produce_records(broker.bootstrap, sink_env["topic"], records)
    n_bad = sum(1 for kind in expected if kind)
    assert n_bad == 3 * len(hostile)

    sink = sink_env["box"]["sink"]
    wait_for(
        lambda: sink.stats.rows + sink.stats.rejected == len(records),
        timeout=60,
        message=lambda: f"all {len(records)} records handled, stats={sink.stats}",
    )
    assert "error" not in sink_env["box"], sink_env["box"].get("error")
    assert sink_env["thread"].is_alive()  # the sink never stopped
    assert sink.stats.rows == len(good) and sink.stats.rejected == n_bad
    stored = {
        r[0] for r in client.query("SELECT decision_id FROM governance.decisions").result_rows
    }
    assert stored == {d.decision_id for d in good}
    assert _scalar(client, "SELECT count() FROM governance.decisions FINAL") == len(good)
    assert _scalar(client, "SELECT toYear(min(event_time)) FROM governance.decisions") == 1971
    assert _scalar(client, "SELECT max(length(reason)) FROM governance.decisions") == 60_000
    rejected = {
        (int(p), int(o)): (kind, error)
        for p, o, kind, error in client.query(
            "SELECT audit_partition, audit_offset, error_kind, error FROM governance.rejected"
        ).result_rows
    }
    assert rejected.keys() == {where for where, kind in zip(landed, expected, strict=True) if kind}
    for where, kind in zip(landed, expected, strict=True):
        if kind:
            assert rejected[where][0] == kind, (where, rejected[where])
            assert rejected[where][1], "every rejected record says why"
    errors = " | ".join(error for _, error in rejected.values())
    for fragment in (
        "spent_usd: 1e+308 is not an amount Decimal(18, 6) holds",
        "tool_calls: 9223372036854775808 is outside UInt32's range",
        "decided_at: 1971-01-01T00:00:00+00:00 is outside the audit's window",
        "event_time: 9999-12-31T23:59:59+00:00 is outside DateTime64's range",
        "VIOLATED_CONSTRAINT",
        "recursion limit exceeded",
    ):
        assert fragment in errors, fragment


# --------------------------------------------------------------------------- rebalance


def test_a_second_sink_joining_mid_stream_takes_partitions_and_the_audit_stays_exact(
    broker: Any, chdb_dir: Path, topic_prefix: str
) -> None:
    """Partitions move while batches are being written (the sink writes one batch while it
    reads the next): the write in flight finishes and is committed before they go, nothing
    is lost, and the new owner's re-reads fold."""
    topic = f"{topic_prefix}gov.decisions"
    create_topic(broker.bootstrap, topic, partitions=4)
    client = connect(f"chdb://{chdb_dir}", create=True)
    migrate(client, ttl_days=30)
    group = f"{topic_prefix}audit"
    sinks = [
        AuditSink(
            {"bootstrap.servers": broker.bootstrap},
            client,
            topic,
            group_id=group,
            batch_size=30,
            batch_timeout_s=0.05,
            consumer_overrides=FAST_GROUP,
        )
        for _ in range(2)
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=s.run, args=(stop,), daemon=True) for s in sinks]
    start = datetime.now(UTC) - timedelta(minutes=1)
    decisions = scenario_decisions(runs=200, start=start)
    unique = {d.decision_id for d in decisions}
    half = len(decisions) // 2
    try:
        threads[0].start()
        sent = produce_decisions(broker.bootstrap, topic, decisions[:half])
        wait_for(lambda: sinks[0].stats.rows > 0, timeout=30, message="the first sink writing")
        threads[1].start()  # joins while the first one has batches to write
        sent += produce_decisions(broker.bootstrap, topic, decisions[half:], duplicate_every=5)
        wait_for(
            lambda: _committed(broker.bootstrap, group, topic, 4) == sent,
            timeout=60,
            message=lambda: f"every offset committed ({[s.stats.describe() for s in sinks]})",
        )
        assert all(s.stats.rows > 0 for s in sinks), "the second sink took no partition"
        assert _scalar(client, "SELECT count() FROM governance.decisions FINAL") == len(unique)
        assert _scalar(client, "SELECT count() FROM governance.rejected") == 0
        assert sum(s.stats.rows for s in sinks) >= sent  # re-reads after the move, never less
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        client.close()


# --------------------------------------------------------------------------- insert types


def test_low_cardinality_columns_are_sent_plain_and_stored_as_the_table_says(
    chdb_dir: Path,
) -> None:
    from baton.sinks.audit_batch import DECISIONS_TABLE, AuditBatch, write_batch
    from baton.sinks.audit_insert import insert_types
    from baton.sinks.rows import DECISION_COLUMNS

    client = connect(f"chdb://{chdb_dir}", create=True)
    try:
        migrate(client, ttl_days=30)
        types = insert_types(client, DECISIONS_TABLE, DECISION_COLUMNS)
        by_name = dict(zip(DECISION_COLUMNS, types, strict=True))
        assert not any(t.startswith("LowCardinality") for t in types)
        assert by_name["outcome"] == "String" and by_name["owner"] == "Nullable(String)"
        assert by_name["decided_at"] == "DateTime64(6, 'UTC')"
        batch = AuditBatch("t", ttl_days=30)
        decisions = scenario_decisions(runs=3, start=datetime.now(UTC) - timedelta(minutes=1))
        for i, d in enumerate(decisions):
            batch.add(0, i, d.to_json())
        write_batch(client, batch, types={DECISIONS_TABLE: types})
        stored = client.query(
            "SELECT decision_id, outcome, owner, toTypeName(outcome), toTypeName(owner) "
            "FROM governance.decisions ORDER BY audit_offset"
        ).result_rows
        assert [r[:3] for r in stored] == [(d.decision_id, d.outcome, d.owner) for d in decisions]
        assert stored[0][3:] == ("LowCardinality(String)", "LowCardinality(Nullable(String))")
    finally:
        client.close()


def test_a_transaction_left_open_on_the_decisions_topic_holds_no_decision_out_of_the_audit(
    broker: Any, sink_env: dict[str, Any]
) -> None:
    """A writer's transaction left open on gov.decisions (Tansu never aborts it) held the
    read_committed sink at its first record: every later decision of that partition stayed
    out of the audit, a kill among them, which a `baton up` restart then lost (session 30 H1).
    Under at_least_once (the default) no Baton writer uses transactions there, and the sink
    reads it read_uncommitted: every decision is stored, the forged record is rejected."""
    from tests.stack import open_transaction

    client: Client = sink_env["client"]
    attackers = [open_transaction(broker.bootstrap, sink_env["topic"], p) for p in range(4)]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    decisions = scenario_decisions(runs=8, start=start)
    produce_decisions(broker.bootstrap, sink_env["topic"], decisions)
    unique = {d.decision_id for d in decisions}
    wait_for(
        lambda: _scalar(client, "SELECT count() FROM governance.decisions FINAL") == len(unique),
        timeout=60,
        message=lambda: (
            f"{len(unique)} decisions in the audit: "
            f"{_scalar(client, 'SELECT count() FROM governance.decisions FINAL')}"
        ),
    )
    wait_for(
        lambda: _scalar(client, "SELECT count() FROM governance.rejected") == 4,
        timeout=20,
        message="the forged records rejected",
    )
    del attackers


def test_a_draining_sink_stores_the_topic_to_its_end_then_stops_by_itself(
    broker: Any, chdb_dir: Path, topic_prefix: str
) -> None:
    """`baton sink --drain-s` (what `baton up` runs, session 35): told to drain with records
    still unread, it reads every partition to the end its fetches report, stores them and
    returns, with no stop signal at all; the records of an empty partition count as read."""
    topic = f"{topic_prefix}gov.decisions"
    create_topic(broker.bootstrap, topic, partitions=4)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    decisions = [d for d in scenario_decisions(runs=40, start=start)]
    unique = {d.decision_id for d in decisions}
    produce_decisions(broker.bootstrap, topic, decisions)
    settings = Settings(
        bootstrap=broker.bootstrap,
        clickhouse_dsn=f"chdb://{chdb_dir}",
        topic_prefix=topic_prefix,
        sink_batch_size=50,  # several batches: the end is not one fetch away
        sink_batch_timeout_s=5.0,  # a batch in hand is stored by the stop, not the timeout
    )
    stop, drain = threading.Event(), threading.Event()
    drain.set()
    box: dict[str, Any] = {}

    def target() -> None:
        box["stats"] = run_sink(
            settings,
            stop,
            sql_port=None,
            topic=topic,
            consumer_overrides=FAST_GROUP,
            drain_event=drain,
        )

    thread = threading.Thread(target=target, name="draining-sink", daemon=True)
    thread.start()
    thread.join(90)
    stopped = not thread.is_alive()
    stop.set()  # a sink that never ends is stopped for the next test
    thread.join(30)
    assert stopped, "the draining sink did not stop by itself"
    assert box["stats"].rows == len(decisions)
    client = connect(settings.clickhouse_dsn)
    try:
        ids = {
            r[0] for r in client.query("SELECT decision_id FROM governance.decisions").result_rows
        }
    finally:
        client.close()
    assert ids == unique
