"""Compressed bombs on gov.handoff.requests through a real `baton worker` over Tansu
(H4's F12, processors/fetch_bound.py): the worker's memory stays bounded, each bomb becomes
one dead letter naming its offsets, and the events after it are decided."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import orjson
import pytest
from confluent_kafka import Producer

from baton.schemas.decision import Outcome
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from tests.helpers import handoff, wait_for

from .conftest import PARTITIONS, TEST_POLICY, Stack, one_worker_stack

pytestmark = pytest.mark.integration

#: each bomb: this many zero bytes in one record (lz4: ~280 KB on the wire, gzip: ~65 KB);
#: unbounded, a worker holds the batch decompressed and the record's copy (2x this)
BOMB_BYTES = 64 * 1024 * 1024
#: what the bombs may add to the worker's peak memory (the bound is 8 MB a batch)
MARGIN_KB = 40 * 1024


@pytest.fixture(scope="module")
def bound_stack(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with one_worker_stack(broker, tmp_path_factory.mktemp("fetchbound"), TEST_POLICY, "z") as s:
        yield s


def _run_on(partition: int) -> str:
    while True:
        run = f"run_{uuid.uuid4().hex[:8]}"
        if partition_for(run.encode(), PARTITIONS) == partition:
            return run


def _peak_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _decided(s: Stack, runs: list[str]) -> None:
    s.requests.send([handoff(run, 1, "t1") for run in runs])
    for run in runs:
        assert s.decisions.wait_run(run, 1)[0].outcome == Outcome.ALLOW, s.logs()


def _dead_letters(s: Stack, kind: str, count: int, what: str) -> list[dict]:
    """The stack's dead letters of ``kind`` once it holds at least ``count`` (30 s)."""
    return wait_for(
        lambda: (
            [d for d in map(orjson.loads, s.deadletters.records) if d["error_kind"] == kind]
            if len(s.deadletters.records) >= count
            else None
        ),
        30,
        message=what,
    )


def test_a_compressed_bomb_is_dead_lettered_without_inflating_the_worker(
    bound_stack: Stack,
) -> None:
    s = bound_stack
    pid = s.workers[0].proc.pid
    _decided(s, [_run_on(p) for p in range(PARTITIONS)])  # the baseline: small records
    before = _peak_kb(pid)
    bombs = {0: "lz4", 1: "gzip"}
    for partition, codec in bombs.items():
        producer = Producer(
            {
                "bootstrap.servers": s.bootstrap,
                "compression.type": codec,
                "message.max.bytes": 1_000_000_000,
            }
        )
        producer.produce(s.catalog.requests, bytes(BOMB_BYTES), b"bomb", partition=partition)
        assert producer.flush(30) == 0
    # a good event after each bomb, on its partition: decided, so the consumer moved past
    _decided(s, [_run_on(p) for p in bombs])
    after = _peak_kb(pid)
    letters = _dead_letters(s, "batch_too_large", len(bombs), "the bombs' dead letters")
    assert sorted(d["partition"] for d in letters) == sorted(bombs)
    for d in letters:
        assert d["topic"] == s.catalog.requests
        assert f"of {s.catalog.requests}[{d['partition']}]" in d["error"]
        assert "BATON_MAX_DECOMPRESSED_BATCH_BYTES" in d["error"], d["error"]
        assert "offsets" in d["error"]
    assert s.workers[0].alive(), s.logs()
    assert after - before < MARGIN_KB, (
        f"the worker's peak memory grew {(after - before) // 1024} MB with the bombs "
        f"(from {before // 1024} MB); bound: {MARGIN_KB // 1024} MB"
    )
