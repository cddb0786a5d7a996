"""`baton doctor` against a real healthy stack (Tansu, a worker, the sink on chDB) and broken
ones: a dead broker port, an unmigrated and a half-migrated audit, a missing topic and a topic
with the wrong retention."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Producer

from baton.streams.embedded import EmbeddedBroker
from baton.streams.net import free_port
from baton.streams.topics import TopicCatalog
from tests.builds import COMPILED
from tests.helpers import wait_for
from tests.stack import (
    SinkProcess,
    WorkerProcess,
    fresh_topics,
    open_transaction,
    wait_deciding,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2


@dataclass
class Healthy:
    env: dict[str, str]
    catalog: TopicCatalog
    chdb: Path


def doctor(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``baton doctor`` as an operator runs it: a fresh process with only ``env`` set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return subprocess.run(
        [sys.executable, "-m", "baton.cli", "doctor", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """check name -> its line, from the text report."""
    found = {}
    for line in result.stdout.splitlines():
        if line[:1] in "✔✘–" and ": " in line:
            found[line[2:].split(": ", 1)[0]] = line
    return found


@pytest.fixture(scope="module")
def healthy(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Healthy]:
    prefix = f"d{uuid.uuid4().hex[:8]}."
    workdir = tmp_path_factory.mktemp("doctor")
    policy = workdir / "policy.yaml"
    policy.write_text("multi_agent:\n  max_handoffs: 8\n")
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    worker = WorkerProcess(broker.bootstrap, prefix, workdir, partitions=PARTITIONS, policy=policy)
    sink = SinkProcess(
        broker.bootstrap, prefix, workdir / "chdb", workdir / "sink.log", partitions=PARTITIONS
    )
    try:
        wait_deciding(broker.bootstrap, catalog)
        sink.wait_ready()
        wait_for(
            lambda: _committed(broker.bootstrap, f"baton-{prefix.rstrip('.')}-audit", catalog),
            30,
            message="the sink's first commit",
        )
        yield Healthy(
            {
                "BATON_BOOTSTRAP": broker.bootstrap,
                "BATON_TOPIC_PREFIX": prefix,
                "BATON_PARTITIONS": str(PARTITIONS),
                "BATON_APP_ID": f"baton-{prefix.rstrip('.')}",
                "BATON_POLICY": str(policy),
                "BATON_CLICKHOUSE_DSN": sink.dsn,
            },
            catalog,
            workdir / "chdb",
        )
    finally:
        worker.stop()
        sink.stop()


def _committed(bootstrap: str, group: str, catalog: TopicCatalog) -> bool:
    """``group`` has committed an offset on a partition of gov.decisions."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    parts = [TopicPartition(catalog.decisions, p) for p in range(PARTITIONS)]
    request = [ConsumerGroupTopicPartitions(group, parts)]
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: its futures die with it
    answer = admin.list_consumer_group_offsets(request, request_timeout=5)
    return any(tp.offset >= 0 for tp in answer[group].result(10).topic_partitions)


def _commit_as(group: str, bootstrap: str, topic: str) -> None:
    """``group`` commits offset 0 of ``topic``'s partition 0, as a consumer that read it."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        consumer.close()


def test_a_healthy_stack_passes_every_check(healthy: Healthy) -> None:
    result = doctor(healthy.env)
    assert result.returncode == 0, result.stdout + result.stderr
    found = lines(result)
    for spec in healthy.catalog.specs():
        assert found[f"topic {spec.name}"].startswith("✔"), found
    control = found[f"topic {healthy.catalog.control}"]
    assert "1 partitions" in control and "retention.ms=-1" in control
    changelog = f"topic {healthy.env['BATON_APP_ID']}-runs-changelog"
    assert "cleanup.policy=compact" in found[changelog]
    for name in (
        "broker",
        "lag",
        "audit lag",
        "policy file",
        "clickhouse",
        "audit schema",
        "sql endpoint",
        "open transactions",
        f"other groups on {healthy.catalog.requests}",
    ):
        assert found[name].startswith("✔"), found[name]
    assert found[f"workers (group {healthy.env['BATON_APP_ID']})"].startswith("✔")
    assert "from " + healthy.env["BATON_POLICY"] in found["policy in force"]
    assert found["alert webhook"].startswith("–")  # none set: shown, not a failure
    # the suite's editable install is pure Python; run against a compiled build (first on
    # PYTHONPATH, tests/builds.py) it names that one
    if COMPILED:
        assert found["replay core"].startswith("✔ ") and "compiled" in found["replay core"]
    else:
        assert found["replay core"].startswith("– ") and "interpreted" in found["replay core"]
        assert "`pip install .` compiles it" in found["replay core"]
    assert result.stdout.rstrip().endswith("all checks passed")


def test_json_report_for_scripts(healthy: Healthy) -> None:
    result = doctor(healthy.env, "--format", "json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"] is True
    statuses = {c["check"]: c["status"] for c in report["checks"]}
    assert statuses["audit schema"] == "ok" and statuses["alert webhook"] == "skip"
    assert set(statuses.values()) <= {"ok", "skip"}


def test_a_dead_broker_is_one_clear_line_within_seconds(healthy: Healthy) -> None:
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = doctor({**healthy.env, "BATON_BOOTSTRAP": dead})
    took = time.monotonic() - started
    assert result.returncode == 1
    assert took < 10, f"took {took:.1f} s"
    kafka = [line for line in result.stdout.splitlines() if dead in line]
    assert len(kafka) == 1 and kafka[0].startswith("✘ broker:"), result.stdout
    assert "connection refused" in kafka[0] and "fix:" in kafka[0]
    assert not any(line.startswith(("✔ topic", "✘ topic")) for line in result.stdout.splitlines())
    assert "%3|" not in result.stderr and "%4|" not in result.stderr, result.stderr
    # what does not need Kafka is still checked
    assert lines(result)["audit schema"].startswith("✔")


def test_an_unmigrated_audit_is_named_with_the_fix(healthy: Healthy, tmp_path: Path) -> None:
    empty = tmp_path / "chdb"
    empty.mkdir()
    result = doctor({**healthy.env, "BATON_CLICKHOUSE_DSN": f"chdb://{empty}"})
    assert result.returncode == 1
    schema = lines(result)["audit schema"]
    assert schema.startswith("✘") and "never migrated" in schema and "baton sink" in schema
    assert lines(result)["sql endpoint"].startswith("✘")


def test_a_half_migrated_audit_names_the_missing_migrations(
    healthy: Healthy, tmp_path: Path
) -> None:
    half = tmp_path / "chdb"
    # in a process of its own: chDB keeps a directory locked for as long as its process lives
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from baton.sinks.clickhouse import connect\n"
            "from baton.sinks.schema import load_migrations, migrate\n"
            "migrate(connect(sys.argv[1], create=True), 30, load_migrations()[:2])\n",
            f"chdb://{half}",
        ],
        check=True,
        timeout=60,
    )
    result = doctor({**healthy.env, "BATON_CLICKHOUSE_DSN": f"chdb://{half}"})
    schema = lines(result)["audit schema"]
    assert result.returncode == 1
    assert schema.startswith("✘ audit schema: 2 of ") and "missing 0003_" in schema, schema


def test_a_missing_topic_and_a_wrong_retention_are_named(broker: EmbeddedBroker) -> None:
    from confluent_kafka.admin import AdminClient

    prefix = f"x{uuid.uuid4().hex[:8]}."
    catalog = TopicCatalog(prefix=prefix, partitions=PARTITIONS)
    topics = []
    for spec in catalog.specs():
        if spec.name == catalog.stops:
            continue
        topic = spec.new_topic()
        if spec.name == catalog.control:  # kill switches must never expire
            topic = type(topic)(spec.name, 1, 1, config={"retention.ms": "3600000"})
        topics.append(topic)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics(topics).values():
        future.result(10)
    env = {
        "BATON_BOOTSTRAP": broker.bootstrap,
        "BATON_TOPIC_PREFIX": prefix,
        "BATON_PARTITIONS": str(PARTITIONS),
        "BATON_APP_ID": f"baton-{prefix.rstrip('.')}",
        "BATON_CLICKHOUSE_DSN": "http://nobody:x@127.0.0.1:1/default",
    }
    # a second fleet (another app id: a rename, a staging fleet on this cluster) has read the
    # events: it decides them from run states of its own, and its allow counts as much
    _commit_as("staging-fleet", broker.bootstrap, catalog.requests)
    # Tansu lists this one percent-encoded and finds its offsets only under the name written
    _commit_as("odd\nname", broker.bootstrap, catalog.requests)
    _commit_as(env["BATON_APP_ID"], broker.bootstrap, catalog.requests)  # ours: not named
    # a transaction left open on gov.decisions[1] (session 30 H1: doctor was green while the
    # audit, the SDK and replay got nothing past it)
    attacker = open_transaction(broker.bootstrap, catalog.decisions, 1)
    after = Producer({"bootstrap.servers": broker.bootstrap})
    after.produce(catalog.decisions, b"{}", b"k", partition=1)
    assert after.flush(10) == 0
    result = doctor(env, "--timeout", "2")  # no worker: the probe waits this long
    del attacker
    held = lines(result)["open transactions"]
    assert held.startswith("✘") and f"{catalog.decisions}[1] at offset 0 (2 offsets" in held, held
    assert "1 partition(s) held" in held and "transaction.timeout.ms" in held
    found = lines(result)
    assert result.returncode == 1
    others = found[f"other groups on {catalog.requests}"]
    assert others.startswith("✘") and "2 group(s) besides" in others, others
    assert "'staging-fleet'" in others and "kafka-consumer-groups.sh --delete" in others
    assert "'odd\\nname'" in others  # named, escaped
    assert repr(env["BATON_APP_ID"]) not in others.split("have read it")[1]
    stops = found[f"topic {catalog.stops}"]
    assert stops.startswith("✘") and "missing" in stops and "--partitions 2" in stops
    control = found[f"topic {catalog.control}"]
    assert "retention.ms=3600000, expected -1" in control and "kafka-configs.sh" in control
    assert found[f"topic {catalog.requests}"].startswith("✔")
    assert found[f"workers (group baton-{prefix.rstrip('.')})"].startswith("✘")
    assert found["clickhouse"].startswith("✘") and "127.0.0.1:1" in found["clickhouse"]


def test_a_stack_whose_worker_stopped_fails_the_workers_check(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Tansu calls the group stable long after its last worker left: doctor probes instead."""
    prefix = f"w{uuid.uuid4().hex[:8]}."
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    worker = WorkerProcess(broker.bootstrap, prefix, tmp_path, partitions=PARTITIONS)
    env = {
        "BATON_BOOTSTRAP": broker.bootstrap,
        "BATON_TOPIC_PREFIX": prefix,
        "BATON_PARTITIONS": str(PARTITIONS),
        "BATON_APP_ID": f"baton-{prefix.rstrip('.')}",
        "BATON_CLICKHOUSE_DSN": "http://nobody:x@127.0.0.1:1/default",
    }
    group = f"workers (group baton-{prefix.rstrip('.')})"
    try:
        wait_deciding(broker.bootstrap, catalog)
        running = lines(doctor(env))[group]
        assert running.startswith("✔") and "answered a probe" in running, running
    finally:
        worker.stop()
    report = lines(doctor(env, "--timeout", "3"))
    stopped = report[group]
    assert stopped.startswith("✘") and "no Baton worker answered" in stopped, stopped
    assert "start `baton worker`" in stopped
    # its decisions (the probes') were never written to an audit: no sink ever ran here
    audit = report["audit lag"]
    assert audit.startswith("✘") and "never committed" in audit and "baton sink" in audit


def test_audit_lag_counts_every_record_of_a_batch_tansu_lists_as_one(
    broker: EmbeddedBroker,
) -> None:
    """Tansu's ListOffsets answers the first offset of the last record batch + 1: doctor read
    the watermark, so 20 decisions written in one batch and a sink committed at 1 read
    "0: the sink has committed every decision" (session 29, H3). It reads the end a fetch
    finds (streams.transactions.committed_ends)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    prefix = f"l{uuid.uuid4().hex[:8]}."
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    app_id = f"baton-{prefix.rstrip('.')}"
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 200})
    for _ in range(20):
        producer.produce(catalog.decisions, b"{}", b"run", partition=0)
    assert producer.flush(30) == 0
    sink = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": f"{app_id}-audit", "log_level": 0}
    )
    try:
        sink.commit(offsets=[TopicPartition(catalog.decisions, 0, 1)], asynchronous=False)
        _low, high = sink.get_watermark_offsets(TopicPartition(catalog.decisions, 0), timeout=10)
    finally:
        sink.close()
    assert high < 20  # Tansu's short answer, the reason for this test (one batch: 1)
    env = {
        "BATON_BOOTSTRAP": broker.bootstrap,
        "BATON_TOPIC_PREFIX": prefix,
        "BATON_PARTITIONS": str(PARTITIONS),
        "BATON_APP_ID": app_id,
        "BATON_CLICKHOUSE_DSN": "http://nobody:x@127.0.0.1:1/default",
    }
    audit = lines(doctor(env, "--timeout", "3"))["audit lag"]
    assert "19 decision(s) past the sink's committed offsets" in audit, audit
