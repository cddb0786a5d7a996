"""BATON_CONSUMER_LOOP=inline: Faust's consumer as a task on the worker's loop, on a real Tansu.

Workers with their consumer inline decide, share the partitions when a second one joins
(rebalance), stop cleanly on SIGTERM (the consumer service ended as a task, the worker's own
tasks left to Faust), and after a kill -9 a worker with a consumer thread restores their
runs from the changelog: nothing counted twice."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from baton.processors.faust_inline import let_the_next_fetch_go
from baton.schemas.decision import Decision, Outcome
from baton.streams.embedded import EmbeddedBroker
from baton.streams.topics import TopicCatalog, ensure_topics
from tests.helpers import handoff, wait_for
from tests.integration.conftest import PARTITIONS, TEST_POLICY
from tests.stack import Collector, EventSender, WorkerProcess, fresh_topics, wait_deciding

pytestmark = pytest.mark.integration

INLINE = {"BATON_CONSUMER_LOOP": "inline"}


def test_an_inline_consumer_decides_rebalances_and_stops_cleanly(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    prefix = f"cl{uuid.uuid4().hex[:8]}."
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEST_POLICY)
    decisions = Collector(broker.bootstrap, catalog.decisions)
    sender = EventSender(broker.bootstrap, catalog.requests)

    def worker(name: str, env: dict[str, str] | None = None) -> WorkerProcess:
        return WorkerProcess(
            broker.bootstrap, prefix, tmp_path, partitions=PARTITIONS, policy=policy,
            name=name, extra_env=env,
        )  # fmt: skip

    first = worker("w1", INLINE)
    workers = [first]
    try:
        wait_deciding(broker.bootstrap, catalog)
        runs = [f"inline-{i}" for i in range(8)]

        def answers(run: str) -> dict[str, Decision]:
            """The run's decisions by request id, each once (re-emitted copies left out)."""
            return {d.request_id: d for d in decisions.for_run(run) if not d.reemitted}

        def decided(numbers: tuple[int, ...], timeout: float = 60) -> dict[str, Decision]:
            sender.send([handoff(run, n, f"t{n}") for run in runs for n in numbers])
            wanted = {f"{run}-h{n}" for run in runs for n in numbers}
            got: dict[str, Decision] = {}

            def all_in() -> bool:
                for run in runs:
                    got.update(answers(run))
                return wanted <= got.keys()

            wait_for(all_in, timeout, message=lambda: [w.log() for w in workers])
            return got

        def counted(got: dict[str, Decision], numbers: tuple[int, ...]) -> None:
            for run in runs:
                assert [got[f"{run}-h{n}"].handoff_count for n in numbers] == list(numbers)

        counted(decided((1, 2, 3, 4)), (1, 2, 3, 4))
        # a second inline worker joins: the group rebalances between two inline consumers
        workers.append(worker("w2", INLINE))
        counted(decided((5, 6)), (5, 6))
        first.stop()  # SIGTERM: its consumer service ends as a task, the group is left
        assert first.proc.returncode == 0, first.log()
        assert "_InlineConsumerThread]: Stopping" in first.log()
        assert "Traceback" not in first.log(), first.log()
        counted(decided((7, 8)), (7, 8))
        workers[1].kill9()  # a worker in a thread of its own restores the runs: none counted twice
        workers.append(worker("w3"))
        got = decided((9,), 90)
        for run in runs:
            ninth = got[f"{run}-h9"]
            assert (ninth.outcome, ninth.reason) == (Outcome.STOP, "handoff_budget_exceeded")
    finally:
        for w in workers:
            w.stop()
        decisions.close()


async def _fetches_on_the_wire(broker: EmbeddedBroker, topic: str) -> tuple[bool, bool]:
    """(a FetchRequest written right after getmany handed records out, one written after
    let_the_next_fetch_go): what the inline consumer's getmany does before a batch."""
    from aiokafka import AIOKafkaConsumer
    from confluent_kafka import Producer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, group_id=None,
        auto_offset_reset="earliest", fetch_max_wait_ms=10,
    )  # fmt: skip
    await consumer.start()
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})

    def fetch_written() -> bool:
        # aiokafka keeps each request written to a connection until its answer is read
        # (as the request's versioned struct: FetchRequest_v11 on Tansu)
        written = (r for c in consumer._client._conns.values() for _, r, _ in c._requests)
        return any(type(r).__name__.startswith("FetchRequest") for r in written)

    try:
        records: dict = {}
        while not records:
            producer.produce(topic, b"x", partition=0)
            producer.flush(10)
            records = await consumer.getmany(timeout_ms=5000)
        at_once = fetch_written()
        await let_the_next_fetch_go()
        return at_once, fetch_written()
    finally:
        await consumer.stop()


def test_an_inline_fetch_has_the_next_fetch_on_the_wire_before_its_batch_is_decided(
    broker: EmbeddedBroker,
) -> None:
    """Inline, the worker decides a fetch's batch on the loop aiokafka fetches on: unless it
    yields first, the next fetch goes out only once the batch is decided and published."""
    topic = f"nf{uuid.uuid4().hex[:8]}"
    ensure = TopicCatalog(prefix=f"{topic}.", partitions=1, replication=1)
    ensure_topics({"bootstrap.servers": broker.bootstrap}, ensure, timeout=10)
    at_once, after_yielding = asyncio.run(_fetches_on_the_wire(broker, ensure.requests))
    assert (at_once, after_yielding) == (False, True)
