"""Session 11 on a real worker and a real sink: a forged ``allow`` a writer of gov.decisions
publishes under the id the worker will use, before the worker's own decision, leaves a trace
in the audit (migration 0006) after the worker's row replaced it in ``FINAL``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.probe import wait_until_deciding
from baton.schemas.events import HandoffRequested
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from tests.helpers import wait_for
from tests.integration.conftest import TEST_POLICY
from tests.stack import Collector, EventSender, SinkProcess, WorkerProcess, fresh_topics
from tests.unit.test_engine_support import seed_policy

pytestmark = pytest.mark.integration

PARTITIONS = 2
REFUND = "billing.refund.create"


def test_a_forged_allow_before_the_workers_decision_leaves_a_conflict(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The attacker computes the id of the worker's coming decision from the request (run,
    request id, phase) and publishes a forged ``allow`` under it on the run's partition; the
    sink stores it; then the request comes and the worker answers ``approval_required``,
    whose row replaces the forged one in ``FINAL``. The audit used to hold no trace of the
    allow a waiting client could have taken; now ``decision_conflicts`` names both records
    and `baton audit verify` fails on it."""
    prefix = f"s11a{uuid.uuid4().hex[:8]}."
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    (tmp_path / "policy.yaml").write_text(TEST_POLICY)
    (tmp_path / "chdb").mkdir()
    worker = WorkerProcess(
        broker.bootstrap, prefix, tmp_path, partitions=PARTITIONS, policy=tmp_path / "policy.yaml"
    )
    sink = SinkProcess(
        broker.bootstrap, prefix, tmp_path / "chdb", tmp_path / "sink.log", partitions=PARTITIONS
    )
    decisions = Collector(broker.bootstrap, catalog.decisions)
    try:
        conf = {"bootstrap.servers": broker.bootstrap}
        wait_until_deciding(conf, catalog.requests, catalog.decisions, PARTITIONS, 60)
        sink.wait_ready()
        run = f"run_{uuid.uuid4().hex[:8]}"
        request = HandoffRequested(
            request_id="h-refund",
            run_id=run,
            task_id="refund",
            from_agent="planner",
            to_agent="billing_agent",
            action=REFUND,
            event_time=datetime.now(UTC),
        )
        # what the attacker publishes: a well-formed allow under the id the worker will use,
        # a digest of the run, the request, the phase and where the request will be read (the
        # partition's next offset): the worker's own step computes it
        partition = partition_for(run.encode(), PARTITIONS)
        reader = Consumer({**conf, "group.id": f"peek-{uuid.uuid4().hex[:6]}"})
        _, next_offset = reader.get_watermark_offsets(
            TopicPartition(catalog.requests, partition), timeout=10
        )
        reader.close()
        proc = BatchProcessor(seed_policy(), PARTITIONS, {}, worker="w", approvals_topic="a")
        record = InputRecord(
            catalog.requests, partition, next_offset, run.encode(), request.to_json()
        )
        (template,) = [d for _, d in proc.process([record], datetime.now(UTC)).decisions]
        forged = orjson.loads(template.to_json())
        now = datetime.now(UTC).isoformat()
        forged.update(
            outcome="allow", reason="ok", chain_prev=None, chain_hash=None, decided_at=now
        )
        forged_id = template.decision_id
        producer = Producer(conf)
        producer.produce(catalog.decisions, orjson.dumps(forged), run.encode(), partition=partition)
        assert producer.flush(10) == 0
        stored = f"SELECT outcome FROM governance.decisions FINAL WHERE decision_id = '{forged_id}'"
        wait_for(lambda: sink.query(stored) == [("allow",)], 30, message="the forged row stored")

        EventSender(broker.bootstrap, catalog.requests).send([request])
        real = wait_for(
            lambda: next((d for d in decisions.for_run(run) if d.outcome != "allow"), None),
            30,
            message=lambda: f"the worker's decision: {decisions.for_run(run)}",
        )
        assert (real.decision_id, real.outcome) == (forged_id, "approval_required")
        wait_for(
            lambda: sink.query(stored) == [("approval_required",)],
            30,
            message="the worker's row replacing the forged one",
        )
        # one INSERT commits the decisions' part before its materialized view's: a reader
        # between the two sees the worker's row in FINAL and not yet its variant (seen under
        # load: both variants there a moment later)
        conflicts = wait_for(
            lambda: sink.query(
                "SELECT decision_id, arraySort(arrayMap(s -> s.1, said)), why "
                "FROM governance.decision_conflicts"
            ),
            10,
            message="the conflict named",
        )
        assert [c[:2] for c in conflicts] == [(forged_id, ["allow", "approval_required"])]
        assert "different outcomes" in conflicts[0][2]
        verify = subprocess.run(
            [sys.executable, "-m", "baton.cli", "audit", "verify", "--run", run],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("BATON_")},
                "BATON_CLICKHOUSE_DSN": sink.dsn,
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verify.returncode == 1, verify.stdout + verify.stderr
        assert f"CONFLICT decision {forged_id} of run {run}: 2 records" in verify.stdout
    finally:
        decisions.close()
        sink.stop()
        worker.stop()
