"""Attacks on session 7's changes through real workers on a real Tansu (issue 15).

BATON_CONSUMER_LOOP=inline runs Faust's consumer, and so aiokafka's heartbeats, on the
worker's own event loop: a batch that holds the loop past the session timeout (a hostile or
unlucky batch, a slow host) gets the worker expelled while it decides. Its partitions go to
another worker, which restores their runs and decides on; the expelled worker, once its
batch ends, must then write nothing for them (it exits without committing: a batch step that
held the loop past 2/3 of the session, processors/app.py ``_heartbeats_waited``). The batch
is made slow by a ``sitecustomize`` put on the worker's PYTHONPATH (a batch holding a marker
run sleeps in the batch step, as a batch that long to decide would hold the loop), everything
else is the real worker. The batch holds the loop until the test has seen the other worker
decide handoffs 4 and 5 (a file the test writes; BLOCK_S at most), not a fixed 30 s.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from baton.processors.state import RunState
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from tests.helpers import handoff, wait_for
from tests.integration.conftest import PARTITIONS
from tests.stack import Collector, EventSender, WorkerProcess, fresh_topics, wait_deciding

pytestmark = [pytest.mark.integration, pytest.mark.faults]

POLICY = "multi_agent:\n  max_agents_per_run: 4\n  max_handoffs: 100\n  max_delegation_depth: 3\n"
#: the longest the slow batch holds the loop (past the 6 s session timeout of tests/stack.py):
#: inline it ends sooner, once the test has seen w2 decide handoffs 4 and 5 (~11 s on a busy
#: host); with a consumer thread (w1 keeps its partitions: nothing to wait for) it lasts 30 s
BLOCK_S = {"inline": 60, "thread": 30}

SLOW_BATCH = '''"""Test fault: a batch holding a run whose id starts with BATON_TEST_SLOW_RUN
blocks the worker's loop until the file BATON_TEST_RELEASE exists (BATON_TEST_SLOW_S seconds
at most) before it is decided."""
import os
import time

from baton.processors import batch

_real = batch.BatchProcessor.process
_marker = os.environ["BATON_TEST_SLOW_RUN"].encode()


def process(self, records, now):
    if any(r.key.startswith(_marker) for r in records):
        print("test fault: blocking the loop", flush=True)
        until = time.monotonic() + float(os.environ["BATON_TEST_SLOW_S"])
        while time.monotonic() < until and not os.path.exists(os.environ["BATON_TEST_RELEASE"]):
            time.sleep(0.1)
        print("test fault: unblocked", flush=True)
    return _real(self, records, now)


batch.BatchProcessor.process = process
'''


def _owned(worker: WorkerProcess) -> set[int] | None:
    """The partitions the worker last said it owns (None before it said)."""
    found = re.findall(
        r"owns partitions \[([0-9, ]*)\]", worker.log_path.read_text("utf-8", "replace")
    )
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else None


def _changelog_counts(bootstrap: str, topic: str, partitions: set[int]) -> dict[str, list[int]]:
    """Each run's handoff counts, record by record, in the changelog partitions' order."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"h3-{uuid.uuid4().hex[:6]}",
         "enable.auto.commit": False, "enable.partition.eof": True}
    )  # fmt: skip
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    counts: dict[str, list[int]] = {}
    ended: set[int] = set()
    deadline = time.monotonic() + 20
    while ended != partitions and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            ended.add(msg.partition())
            continue
        if msg.value():
            state = RunState.from_bytes(msg.value())
            counts.setdefault(msg.key().decode(), []).append(state.handoff_count)
    consumer.close()
    return counts


@pytest.mark.parametrize(
    "consumer_loop",
    [
        # the control: the consumer thread heartbeats through the long batch, w1 keeps its
        # partitions and nothing is expelled (a soak: 55 s, and the thread worker's
        # heartbeats are covered by every other worker test)
        pytest.param("thread", marks=pytest.mark.soak),
        # inline the heartbeats wait for the batch: w1 is expelled and w2 restores and
        # decides handoffs 4 and 5; w1, its generation still reading the same (the
        # coordinator has not run since), wrote its batch's states (handoff 4) after w2's
        # until the worker refused a batch step that held the loop past 2/3 of the session
        "inline",
    ],
)
def test_a_worker_whose_batch_outlasts_its_session_writes_no_stale_run_state(
    broker: EmbeddedBroker, tmp_path: Path, consumer_loop: str
) -> None:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SLOW_BATCH)
    prefix = f"at{uuid.uuid4().hex[:8]}."
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    decisions = Collector(broker.bootstrap, catalog.decisions)
    sender = EventSender(broker.bootstrap, catalog.requests)
    slow = {
        "BATON_CONSUMER_LOOP": consumer_loop,
        # (ahead of a PYTHONPATH already set: a checkout to try a fix with)
        "PYTHONPATH": os.pathsep.join([str(inject), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "BATON_TEST_SLOW_RUN": "slow-",
        "BATON_TEST_SLOW_S": str(BLOCK_S[consumer_loop]),
        "BATON_TEST_RELEASE": str(tmp_path / "release"),
    }

    def worker(name: str, env: dict[str, str]) -> WorkerProcess:
        return WorkerProcess(
            broker.bootstrap, prefix, tmp_path, partitions=PARTITIONS, policy=policy,
            name=name, extra_env=env,
        )  # fmt: skip

    w1 = worker("w1", slow)
    workers = [w1]
    runs = [f"run{i}" for i in range(16)]

    def decided(n: int, timeout: float = 120) -> None:
        wanted = {f"{run}-h{n}" for run in runs}
        wait_for(
            lambda: wanted <= {d.request_id for run in runs for d in decisions.for_run(run)},
            timeout,
            message=lambda: [w.log() for w in workers],
        )

    try:
        wait_deciding(broker.bootstrap, catalog)
        w2 = worker("w2", {})
        workers.append(w2)

        def split() -> bool:
            a, b = _owned(w1), _owned(w2)
            return bool(a and b and not a & b and len(a | b) == PARTITIONS)

        wait_for(split, 90, message=lambda: [w.log() for w in workers])
        mine = _owned(w1) or set()
        marker = next(
            f"slow-{i}"
            for i in range(1000)
            if partition_for(f"slow-{i}".encode(), PARTITIONS) in mine
        )
        for n in (1, 2, 3):
            sender.send([handoff(run, n, f"t{n}") for run in runs])
            decided(n)
        # w1's next batch holds its loop BLOCK_S: no heartbeat, the group moves its
        # partitions to w2, which restores their runs and decides handoff 4, then 5
        sender.send([handoff(marker, 1, "t1"), *[handoff(run, 4, "t4") for run in runs]])
        decided(4)
        sender.send([handoff(run, 5, "t5") for run in runs])
        decided(5)
        if consumer_loop == "inline":
            # w2 wrote handoff 5's states while w1 still held its batch (else w1's write
            # could not come after them and the test would prove nothing): let w1 go on then
            changelog = f"baton-{prefix.rstrip('.')}-runs-changelog"
            moved = [run for run in runs if partition_for(run.encode(), PARTITIONS) in mine]

            def fifth_written() -> bool:
                counts = _changelog_counts(broker.bootstrap, changelog, mine)
                return all(counts.get(run, [0])[-1] == 5 for run in moved)

            wait_for(fifth_written, 30, message=lambda: [w.log() for w in workers])
            assert "test fault: unblocked" not in w1.log(), w1.log()
            (tmp_path / "release").touch()
        wait_for(lambda: "test fault: unblocked" in w1.log(), BLOCK_S[consumer_loop] + 30)
        # w1 publishes what it decided before it was expelled, or (as it should) exits
        # without writing: 5 s for the writes, less once it has exited
        with contextlib.suppress(subprocess.TimeoutExpired):
            w1.proc.wait(5)
        counts = _changelog_counts(
            broker.bootstrap, f"baton-{prefix.rstrip('.')}-runs-changelog", mine
        )
        # a run's changelog never goes back: a record older than the one before it is what
        # a restore would read (handoff 5 forgotten: its spend and dedup mark lost)
        stale = {run: seq for run, seq in counts.items() if seq != sorted(seq)}
        assert not stale, f"stale run states written after newer ones: {stale}\n" + "\n".join(
            w.log() for w in workers
        )
    finally:
        for w in workers:
            w.stop()
        decisions.close()
