"""A worker killed with SIGKILL and started again restores its runs by librdkafka before
Faust's recovery (processors/faust_restore.py): the same states as Faust's own recovery, a
forgotten run's deletion included, and BATON_FAST_RESTORE=0 still restores them Faust's way."""

from __future__ import annotations

import re
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from baton.schemas.decision import Decision, Outcome, Reason
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from tests.helpers import handoff, wait_for
from tests.integration.conftest import PARTITIONS, TEST_POLICY, Stack, one_worker_stack
from tests.stack import wait_committed, wait_deciding

pytestmark = pytest.mark.faults

RUNS = 24  # max_handoffs is 8 in TEST_POLICY


def _restored(log: str) -> int | None:
    for line in log.splitlines():
        if "before Faust's recovery" in line and " restored " in line:
            return int(line.split(" restored ")[1].split()[0])
    return None


def _wait_committed(s: Stack) -> None:
    """Until the worker's group has committed every request it read."""
    group = f"baton-{s.prefix.rstrip('.')}"
    wait_committed(s.bootstrap, group, s.catalog.requests, s.catalog.partitions)


def _answer(s: Stack, run: str, request_id: str) -> Decision:
    """The first decision of ``request_id`` that is not a re-emitted one."""
    return wait_for(
        lambda: next(
            (d for d in s.decisions.for_run(run) if d.request_id == request_id and not d.reemitted),
            None,
        ),
        30,
        message=lambda: f"{request_id}: {s.decisions.for_run(run)}",
    )


def _changelog(s: Stack) -> str:
    return f"baton-{s.prefix.rstrip('.')}-runs-changelog"


def _first_records(s: Stack, runs: list[str]) -> dict[bytes, bytes]:
    """Each run's first record on the changelog (the worker's, with its MAC)."""
    consumer = Consumer(
        {
            "bootstrap.servers": s.bootstrap,
            "group.id": f"peek-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([_changelog(s)])
    found: dict[bytes, bytes] = {}
    keys = {r.encode() for r in runs}
    deadline = time.monotonic() + 30
    while len(found) < len(runs) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None and msg.key() in keys:
            found.setdefault(msg.key(), msg.value())
    consumer.close()
    return found


def _not_taken(log: str) -> int:
    """How many changelog records the worker's restore said it did not take."""
    return sum(int(n) for n in re.findall(r"(\d+) records not the workers' own newest", log))


def _forge(s: Stack, runs: list[str]) -> None:
    """A writer of the changelog: run 0's first record written again (its budget as after
    one handoff), run 1's budget given back by a record without the workers' MAC (a seq far
    ahead), run 2 deleted, a record for a run no worker ever saw, and one of run 3 on a
    partition not its own."""
    first = _first_records(s, runs[:2])
    forged = orjson.loads(first[runs[1].encode()])
    forged.update(hc=0, sq=10**6)
    del forged["sm"]
    invented = {**forged, "run": "invented"}
    producer = Producer({"bootstrap.servers": s.bootstrap})
    for run, value, moved in (
        (runs[0], first[runs[0].encode()], 0),
        (runs[1], orjson.dumps(forged), 0),
        (runs[2], None, 0),
        ("invented", orjson.dumps(invented), 0),
        (runs[3], b"{}", 1),  # on another partition: it moved the run there (h46a F4)
    ):
        key = run.encode()
        partition = (partition_for(key, PARTITIONS) + moved) % PARTITIONS
        producer.produce(_changelog(s), value, key, partition=partition)
    assert producer.flush(10) == 0


@pytest.mark.parametrize("fast", ["1", "0"])
def test_a_restarted_worker_holds_every_run_as_before_its_kill(
    broker: EmbeddedBroker, tmp_path: Path, fast: str
) -> None:
    """... and takes none of the records a writer of the changelog put there after the
    workers' (processors/state_gate.py): the runs' budgets stand, a run invented is refused."""
    env = {"BATON_FAST_RESTORE": fast, "BATON_AUDIT_CHAIN_KEY": "k" * 32}
    with one_worker_stack(broker, tmp_path, TEST_POLICY, "fr", extra_env=env) as s:
        runs = [f"full-{i}" for i in range(RUNS)]
        s.requests.send(handoff(run, 1, "t1") for run in runs)
        s.decisions.wait_run(runs[0], 1)  # (its first state record: one handoff)
        for n in range(2, 9):  # every run at its handoff budget
            s.requests.send(handoff(run, n, f"t{n}") for run in runs)
        for run in runs:
            assert [d.outcome for d in s.decisions.wait_run(run, 8)] == [Outcome.ALLOW] * 8
        _wait_committed(s)  # nothing read again after the kill: the states must be restored
        _forge(s, runs)
        s.workers[0].kill9()
        again = s.add_worker("w2", env)
        wait_deciding(s.bootstrap, s.catalog)
        restored = _restored(again.log())
        if fast == "1":
            assert restored is not None and restored >= RUNS, again.log()
        else:
            assert restored is None, again.log()
        s.requests.send(handoff(run, 9, "t9") for run in [*runs, "invented"])
        s.requests.send([handoff("fresh", 1, "t1")])
        for run in runs:  # (records read again after the kill are answered again first)
            ninth = _answer(s, run, f"{run}-h9")
            assert (ninth.outcome, ninth.reason) == (
                Outcome.STOP,
                Reason.HANDOFF_BUDGET_EXCEEDED,
            ), (run, ninth)
        assert _answer(s, "fresh", "fresh-h1").outcome == Outcome.ALLOW
        dead = wait_for(lambda: s.deadletters.records, 30, message="the invented run's refusal")
        assert [orjson.loads(r)["error_kind"] for r in dead] == ["state_unreadable"]
        assert b"does not carry the workers' state MAC" in dead[0]
        assert _not_taken(again.log()) == 5, again.log()
        assert not s.decisions.for_run("invented")


def test_a_run_forgotten_before_the_kill_is_new_after_the_fast_restore(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """A forgotten tombstone is a record without a value in the changelog: the fast restore
    deletes the key, as Faust's recovery does (kept, the run id would stay finished)."""
    env = {
        "BATON_RUN_RETENTION_S": "1",
        "BATON_TOMBSTONE_RETENTION_S": "1",
        "BATON_AUDIT_CHAIN_KEY": "k" * 32,  # the deletion passes the state gate
    }
    with one_worker_stack(broker, tmp_path, TEST_POLICY, "fg", extra_env=env) as s:
        s.requests.send([handoff("gone", 1, "t1")])
        assert s.decisions.wait_run("gone", 1)[0].outcome == Outcome.ALLOW
        time.sleep(4)  # evicted after 1 s idle, forgotten 1 s later (the sweep: every second)
        s.requests.send([handoff("kept", 1, "t1")])
        assert s.decisions.wait_run("kept", 1)[0].outcome == Outcome.ALLOW
        _wait_committed(s)
        s.workers[0].kill9()
        again = s.add_worker("w2", env)
        wait_deciding(s.bootstrap, s.catalog)
        wait_for(lambda: _restored(again.log()) is not None, 10, message=again.log)
        s.requests.send([handoff("gone", 2, "t2")])
        second = _answer(s, "gone", "gone-h2")
        # a new run under the old id: allowed (the kept tombstone said run_expired)
        assert second.outcome == Outcome.ALLOW, second
