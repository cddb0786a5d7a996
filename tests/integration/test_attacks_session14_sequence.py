"""Session 14 (H5): a writer of gov.decisions takes the worker's place in its producer's
sequence (/tmp/l14/H5_findings.md F4).

A record batch's header names its producer id, epoch and base sequence, so any reader of
gov.decisions knows the worker's next sequence on a partition. A batch written under that
id and sequence is stored; the worker's own next batch there is then answered as a duplicate
(Tansu: offset -1; aiokafka's DuplicateSequenceNumber path counts it delivered): the
worker's decision is acknowledged, never written, and the worker goes on -- its client gets
no answer, the audit misses the decision, the run's state says it was made. Measured on
HEAD 8bce266: the victim's decision never reached the topic, the worker alive, its next
decision on the partition published.

Fail closed would be: a batch acknowledged without an offset counts as not delivered (the
step fails, the worker exits 75 uncommitted and re-decides under a new producer id). That is
what processors/publish_aiokafka.py does since session 14 (``_Step._answered``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer import fetcher
from aiokafka.structs import TopicPartition

from baton.streams.embedded import EmbeddedBroker
from tests.helpers import handoff, wait_for

from .conftest import TEST_POLICY, Stack, one_worker_stack
from .test_fetch_bound import _run_on

pytestmark = pytest.mark.integration


@pytest.fixture
def seq_stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with one_worker_stack(broker, tmp_path_factory.mktemp("s14seq"), TEST_POLICY, "s14q") as s:
        yield s


class _Headers:
    """aiokafka's records of a fetch, each batch's producer id, epoch, base sequence and
    record count noted as it is read."""

    def __init__(self, records: Any, seen: list[tuple[int, int, int, int]]) -> None:
        self._records, self._seen = records, seen

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        if batch is not None:
            count = batch.next_offset - batch.base_offset
            self._seen.append((batch.producer_id, batch.producer_epoch, batch.base_sequence, count))
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)


async def _batch_headers(bootstrap: str, topic: str, partition: int, batches: int) -> list[Any]:
    """The batch headers of ``topic[partition]`` as any reader sees them."""
    seen: list[tuple[int, int, int, int]] = []
    base = fetcher.PartitionRecords

    class Noting(base):  # type: ignore[misc, valid-type]
        def __init__(self, tp: Any, records: Any, *args: Any) -> None:
            super().__init__(tp, _Headers(records, seen), *args)

    fetcher.PartitionRecords = Noting
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        deadline = time.monotonic() + 10
        while len(seen) < batches and time.monotonic() < deadline:
            await consumer.getmany(tp, timeout_ms=200)
    finally:
        await consumer.stop()
        fetcher.PartitionRecords = base
    return seen


async def _in_its_place(bootstrap: str, topic: str, partition: int, value: bytes) -> None:
    """One record under the id, epoch and next sequence of the partition's last batch."""
    producer_id, epoch, base_sequence, count = (
        await _batch_headers(bootstrap, topic, partition, 3)
    )[-1]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        batch = producer.create_batch()
        batch.append(timestamp=None, key=b"k", value=value, headers=[])
        batch._set_producer_state(producer_id, epoch, base_sequence + count)
        await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


def test_a_decision_taken_for_a_duplicate_is_not_acknowledged(seq_stack: Stack) -> None:
    s = seq_stack
    warm = [_run_on(1) for _ in range(3)]
    for run in warm:  # one batch each, from the worker's idempotent producer
        s.requests.send([handoff(run, 1, "t1")])
        s.decisions.wait_run(run, 1)
    copy = s.decisions.for_run(warm[0])[0].to_json()  # any record will do: a copy
    asyncio.run(_in_its_place(s.bootstrap, s.catalog.decisions, 1, copy))
    victim = _run_on(1)
    s.requests.send([handoff(victim, 1, "t1")])
    # fail closed: the decision published, or the worker gone (exit 75, nothing committed)
    outcome = wait_for(
        lambda: s.decisions.for_run(victim) or (not s.workers[0].alive() and "exited"),
        8,
        message=lambda: f"the victim's decision or the worker's exit; logs: {s.logs()[-1500:]}",
    )
    if outcome == "exited":
        assert s.workers[0].proc.poll() == 75, s.logs()
