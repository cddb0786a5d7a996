"""`baton replay --from-kafka` reads gov.decisions read_committed (as the sink does): a
transaction left open on a partition (Tansu never aborts one; Kafka after
transaction.timeout.ms) ends a fetch at its first record, below the partition's high
watermark. The records after it, any producer's, were not read and the partition was taken
as read: ra's third and fourth handoffs, decided after it, were missing, and the stricter
policy that stops them changed nothing (exit 0). The replay cannot answer (exit 7)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer

from baton.cli.replay_decisions import replay_decisions
from baton.schemas.errors import ReplayFailed
from baton.schemas.settings import Settings
from baton.sinks.replay_source import ReplayScope
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog, ensure_topics
from tests.stack import open_transaction
from tests.unit.test_engine_support import handoff, policy_with
from tests.unit.test_replay_decisions_support import KEY, DecisionsTopic, Worker
from tests.unit.test_replay_kafka_read_order import _exit_code

pytestmark = pytest.mark.integration

STRICTER = policy_with(max_handoffs=2)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_dir=tmp_path_factory.mktemp("tansu")) as running:
        yield running


def _sent(
    broker: EmbeddedBroker, transaction_before_third: bool
) -> tuple[Settings, str, list[Producer]]:
    """ra's four handoffs (and the worker's policy record) on a new gov.decisions, each in a
    committed transaction (its commit marker takes an offset); a writer's transaction left
    open on ra's partition after ra's second decision, if asked."""
    prefix = f"d{uuid.uuid4().hex[:8]}"
    catalog = TopicCatalog(prefix=prefix, partitions=2, replication=1)
    ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog, timeout=10)
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "transactional.id": f"w-{uuid.uuid4()}"}
    )
    producer.init_transactions(30)
    topic = DecisionsTopic(2)
    worker = Worker(topic, policy_with(max_handoffs=20))
    own = partition_for(b"ra", 2)
    held = []
    for n in range(4):
        if n == 2 and transaction_before_third:
            held.append(open_transaction(broker.bootstrap, catalog.decisions, own))
        for p, records in topic.records.items():
            for key, value in records:
                producer.begin_transaction()
                producer.produce(catalog.decisions, key=key, value=value, partition=p)
                producer.commit_transaction(10)
            records.clear()
        worker.decide(handoff(f"ra-h{n}", f"t{n}", "p", "q", run_id="ra"), 10 + n)
    for key, value in topic.records[own]:
        producer.begin_transaction()
        producer.produce(catalog.decisions, key=key, value=value, partition=own)
        producer.commit_transaction(10)
    settings = Settings(
        bootstrap=broker.bootstrap, topic_prefix=prefix, partitions=2, connect_timeout_s=1.0
    )
    return settings, f"{catalog.decisions}[{own}]", held


def test_a_transaction_left_open_before_a_runs_decisions_is_no_end_of_its_partition(
    broker: EmbeddedBroker,
) -> None:
    settings, _, _ = _sent(broker, transaction_before_third=False)
    report, *_ = replay_decisions(settings, ReplayScope(), STRICTER, KEY, 1, 3600.0)
    assert _exit_code(report) == 1  # committed transactions: read to the partition's end
    settings, where, writer = _sent(broker, transaction_before_third=True)
    with pytest.raises(ReplayFailed, match="transaction open") as failed:
        replay_decisions(settings, ReplayScope(), STRICTER, KEY, 1, 3600.0)
    assert where in str(failed.value) and failed.value.exit_code == 7
    assert len(writer) == 1  # (its transaction stayed open to here)
