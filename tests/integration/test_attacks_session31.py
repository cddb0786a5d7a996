"""The thirtieth session's attacks on the runs changelog (H1, session 30), on a real Tansu broker
and `baton worker` process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from baton.streams.embedded import EmbeddedBroker
from tests.helpers import handoff, wait_for
from tests.stack import Collector, EventSender, WorkerProcess, fresh_topics, wait_deciding

pytestmark = pytest.mark.integration

PARTITIONS = 2


def _changelog(bootstrap: str, prefix: str) -> str:
    """The worker's changelog (tests/stack.py names its app ``baton-<prefix>``), created."""
    changelog = f"baton-{prefix.rstrip('.')}-runs-changelog"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(changelog, PARTITIONS, 1, config={"cleanup.policy": "compact"})
    for future in admin.create_topics([topic]).values():
        future.result(10)
    return changelog


def test_a_changelog_record_without_a_key_is_ignored_and_the_worker_keeps_deciding(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """A key-less record on the changelog was restored under the key None; the sweep's
    partition_for(None) raised ~10 s after each start and `baton up` gave up after five
    exits. Now the record is dropped with a warning and the worker goes on deciding."""
    catalog = fresh_topics(broker.bootstrap, topic_prefix, PARTITIONS)
    changelog = _changelog(broker.bootstrap, topic_prefix)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for partition in range(PARTITIONS):
        producer.produce(changelog, b'{"v": 4}', None, partition=partition)
    assert producer.flush(10) == 0
    decisions = Collector(broker.bootstrap, catalog.decisions)
    worker = WorkerProcess(broker.bootstrap, topic_prefix, tmp_path, partitions=PARTITIONS)
    try:
        wait_deciding(broker.bootstrap, catalog, 90)
        wait_for(lambda: "without a run id" in worker.log(), 30, message="the warning")
        time.sleep(12)  # the sweep that raised ran within ~10 s of the start
        EventSender(broker.bootstrap, catalog.requests).send([handoff("after-run", 1, "t1")])
        decisions.wait_run("after-run", 1)
        assert worker.alive(), worker.log()
        assert "Traceback" not in worker.log(), worker.log()
    finally:
        worker.stop()
        decisions.close()


def test_a_changelog_held_by_a_transaction_left_open_is_never_restored_short(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """A transaction a writer of the changelog leaves open (Tansu never aborts it) held a
    read_committed reader at its first record: a restarted worker restored the run as it was
    before it, and allowed the handoff its state said to stop (session 30 H1 F7). Now the
    worker ends (78) naming the held partition, rather than decide on the older state."""
    from baton.schemas.decision import Outcome
    from baton.streams.partitioner import partition_for
    from tests.stack import open_transaction

    catalog = fresh_topics(broker.bootstrap, topic_prefix, PARTITIONS)
    changelog = _changelog(broker.bootstrap, topic_prefix)
    run = "held-run"
    decisions = Collector(broker.bootstrap, catalog.decisions)
    sender = EventSender(broker.bootstrap, catalog.requests)
    worker = WorkerProcess(broker.bootstrap, topic_prefix, tmp_path, partitions=PARTITIONS)
    attacker = None
    try:
        wait_deciding(broker.bootstrap, catalog, 90)
        sender.send([handoff(run, 1, "t1", "planner", "billing_agent")])
        decisions.wait_run(run, 1)
        attacker = open_transaction(  # kept open until the end
            broker.bootstrap, changelog, partition_for(run.encode(), PARTITIONS)
        )
        sender.send([handoff(run, 2, "t2", "planner", "writer")])
        assert decisions.wait_run(run, 2)[1].outcome == Outcome.ALLOW
        time.sleep(2)  # the run's state after t2 is on the changelog (acknowledged first)
        worker.stop()
        worker = WorkerProcess(  # held past its transaction timeout + 5 s: 6 s, not 15
            broker.bootstrap, topic_prefix, tmp_path, partitions=PARTITIONS, name="w2",
            extra_env={"BATON_TRANSACTION_TIMEOUT_MS": "1000"},
        )  # fmt: skip
        sender.send([handoff(run, 3, "t2", "planner", "coder")])  # t2 is the writer's
        wait_for(lambda: not worker.alive(), 90, message="the worker's end")
        assert worker.proc.returncode == 78, worker.log()
        assert f"{changelog}[{partition_for(run.encode(), PARTITIONS)}] is held" in worker.log()
        assert "no change in 6 s" in worker.log()  # its transaction timeout + 5 s
        time.sleep(1)
        third = [d for d in decisions.for_run(run) if d.request_id == f"{run}-h3"]
        assert all(d.outcome != Outcome.ALLOW for d in third), third
    finally:
        worker.stop()
        decisions.close()
        del attacker


def test_a_command_unanswered_behind_a_transaction_left_open_says_so(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    """A transaction left open on the decisions partition of a run: `baton kill --run` of it
    published the kill, the worker applied it, and the command waited out its timeout and
    said "no worker answered ...; is a worker running?" (exit 4) with a worker running. It
    now names the held partition and offset (session 31's known limit)."""
    from baton.schemas.errors import BrokerUnavailable
    from baton.streams.partitioner import partition_for
    from baton.streams.sdk import OperatorClient
    from tests.stack import open_transaction

    catalog = fresh_topics(broker.bootstrap, topic_prefix, PARTITIONS)
    worker = WorkerProcess(broker.bootstrap, topic_prefix, tmp_path, partitions=PARTITIONS)
    attacker = None
    try:
        wait_deciding(broker.bootstrap, catalog, 90)
        run = "held-run"
        attacker = open_transaction(
            broker.bootstrap, catalog.decisions, partition_for(run.encode(), PARTITIONS)
        )
        with (
            OperatorClient(broker.bootstrap, topic_prefix=topic_prefix, timeout=8) as ops,
            pytest.raises(BrokerUnavailable) as raised,
        ):
            ops.kill(run_id=run, operator="oncall", reason="runaway")
        said = str(raised.value)
        assert "held by a transaction left open" in said, said
        assert f"{catalog.decisions}[{partition_for(run.encode(), PARTITIONS)}]" in said, said
        assert worker.alive(), worker.log()
    finally:
        if attacker is not None:
            attacker.abort_transaction(10)
        worker.stop()
