"""A worker killed with SIGKILL and started again restores its runs by librdkafka before
Faust's recovery (processors/faust_restore.py): the same states as Faust's own recovery, a
forgotten run's deletion included, and BATON_FAST_RESTORE=0 still restores them Faust's way."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from baton.schemas.decision import Decision, Outcome, Reason
from baton.streams.embedded import EmbeddedBroker
from tests.helpers import handoff, wait_for
from tests.integration.conftest import TEST_POLICY, Stack, one_worker_stack
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


@pytest.mark.parametrize("fast", ["1", "0"])
def test_a_restarted_worker_holds_every_run_as_before_its_kill(
    broker: EmbeddedBroker, tmp_path: Path, fast: str
) -> None:
    env = {"BATON_FAST_RESTORE": fast}
    with one_worker_stack(broker, tmp_path, TEST_POLICY, "fr", extra_env=env) as s:
        runs = [f"full-{i}" for i in range(RUNS)]
        for n in range(1, 9):  # every run at its handoff budget
            s.requests.send(handoff(run, n, f"t{n}") for run in runs)
        for run in runs:
            assert [d.outcome for d in s.decisions.wait_run(run, 8)] == [Outcome.ALLOW] * 8
        _wait_committed(s)  # nothing read again after the kill: the states must be restored
        s.workers[0].kill9()
        again = s.add_worker("w2", env)
        wait_deciding(s.bootstrap, s.catalog)
        restored = _restored(again.log())
        if fast == "1":
            assert restored is not None and restored >= RUNS, again.log()
        else:
            assert restored is None, again.log()
        s.requests.send(handoff(run, 9, "t9") for run in runs)
        s.requests.send([handoff("fresh", 1, "t1")])
        for run in runs:  # (records read again after the kill are answered again first)
            ninth = _answer(s, run, f"{run}-h9")
            assert (ninth.outcome, ninth.reason) == (
                Outcome.STOP,
                Reason.HANDOFF_BUDGET_EXCEEDED,
            ), (run, ninth)
        assert _answer(s, "fresh", "fresh-h1").outcome == Outcome.ALLOW


def test_a_run_forgotten_before_the_kill_is_new_after_the_fast_restore(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """A forgotten tombstone is a record without a value in the changelog: the fast restore
    deletes the key, as Faust's recovery does (kept, the run id would stay finished)."""
    env = {"BATON_RUN_RETENTION_S": "1", "BATON_TOMBSTONE_RETENTION_S": "1"}
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
