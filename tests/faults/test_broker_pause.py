"""The broker frozen (SIGSTOP) for 10 s, then thawed: clients fail closed meanwhile, and the
worker, the audit sink and the alerter come back on their own."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from baton.schemas.decision import Decision, Outcome
from baton.streams.embedded import EmbeddedBroker
from baton.streams.sdk import GovernanceClient
from baton.streams.topics import TopicCatalog
from tests.helpers import handoff, wait_for
from tests.integration.conftest import PARTITIONS, TEST_POLICY
from tests.stack import (
    BatonProcess,
    Collector,
    SinkProcess,
    WorkerProcess,
    fresh_topics,
    wait_deciding,
)

pytestmark = pytest.mark.faults

PAUSE_S = 10.0
CHECK_TIMEOUT_S = 3.0


@dataclass
class PausableStack:
    broker: EmbeddedBroker
    prefix: str
    worker: WorkerProcess
    sink: SinkProcess
    alerts: BatonProcess

    def processes(self) -> dict[str, WorkerProcess | BatonProcess]:
        return {"worker": self.worker, "sink": self.sink, "alerts": self.alerts}

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.log()[-2500:]}" for name, p in self.processes().items())

    def dead(self) -> list[str]:
        return [name for name, p in self.processes().items() if not p.alive()]


@pytest.fixture
def pausable(tmp_path: Path) -> Iterator[PausableStack]:
    """A broker of this test's own (the session's is shared: never freeze it), a worker, a
    sink holding chDB and ``baton alerts``, all real processes."""
    broker = EmbeddedBroker(log_dir=tmp_path)
    broker.start()
    started: list[WorkerProcess | BatonProcess] = []
    try:
        prefix = f"p{uuid.uuid4().hex[:8]}."
        (tmp_path / "policy.yaml").write_text(TEST_POLICY)
        catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
        env = {
            "BATON_BOOTSTRAP": broker.bootstrap,
            "BATON_TOPIC_PREFIX": prefix,
            "BATON_PARTITIONS": str(PARTITIONS),
            "BATON_APP_ID": f"baton-{prefix.rstrip('.')}",
            "BATON_SESSION_TIMEOUT_S": "6",
        }
        worker = WorkerProcess(
            broker.bootstrap,
            prefix,
            tmp_path,
            partitions=PARTITIONS,
            policy=tmp_path / "policy.yaml",
        )
        started.append(worker)
        (tmp_path / "chdb").mkdir()
        sink = SinkProcess(broker.bootstrap, prefix, tmp_path / "chdb", tmp_path / "sink.log")
        started.append(sink)
        # storms never fold here: every stop is its own line
        alerts = BatonProcess(["alerts", "--storm-threshold", "0"], env, tmp_path / "alerts.log")
        started.append(alerts)
        try:
            wait_deciding(broker.bootstrap, catalog)
        except Exception as exc:
            raise AssertionError(f"worker did not start: {exc}\n{worker.log()}") from exc
        sink.wait_ready()
        yield PausableStack(broker, prefix, worker, sink, alerts)
    finally:
        if broker.pid is not None:
            os.kill(broker.pid, signal.SIGCONT)  # never leave it frozen, even on failure
        for p in started:
            p.stop()
        broker.stop()


def _thread_states(pid: int) -> str:
    """The state letter of each thread of ``pid`` (``T``: stopped, ``Z``: dead, not reaped)."""
    states = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task")):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        except OSError:  # the thread ended meanwhile
            continue
    return "".join(states)


def _freeze(pid: int, timeout: float = 5.0) -> float:
    """SIGSTOP ``pid`` and return (the monotonic clock) once every thread of it is stopped.

    ``os.kill`` returns before the stop takes: the signal wakes one thread, which then stops
    the others; Tansu's threads were seen running (R, S) right after it at load ~18, stopped
    within 27 ms. And a pid whose broker died is a zombie that SIGSTOP leaves as it is
    (EmbeddedBroker.start can return while its Tansu exits AddrInUse and another process's
    broker serves the port): a check sent then is decided, an allow. Fails instead."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while set(states := _thread_states(pid)) - {"T", "t"}:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"broker pid {pid} not stopped {timeout:g} s after SIGSTOP: threads {states} "
                "(Z: it died and another process may serve its port)"
            )
        time.sleep(0.001)
    return time.monotonic()


def _ownership_conflict(gov: GovernanceClient, run: str, timeout: float) -> Decision:
    """A handoff of refund_check to billing_agent, then to researcher: the second is a stop
    (ownership_conflict). Asked again (the same request ids, safe) until Baton answers."""

    def ask(n: int, to: str) -> Decision:
        request = handoff(run, n, "refund_check", "planner", to)
        return wait_for(
            lambda: (
                (d := gov.check(request, timeout=CHECK_TIMEOUT_S)).reason
                != "governance_unavailable"
                and d
            ),
            timeout,
            interval=0.1,
            message=f"a decision for {request.request_id}",
        )

    first, second = ask(1, "billing_agent"), ask(2, "researcher")
    assert first.outcome == Outcome.ALLOW, first
    assert (second.outcome, second.reason) == (Outcome.STOP, "ownership_conflict"), second
    return second


def _audited_and_alerted(
    stack: PausableStack, stop: Decision, timeout: float
) -> tuple[float, float]:
    """Wait until ``stop`` is in ClickHouse and announced by the alerter; return when each
    was first seen (the monotonic clock)."""
    seen: dict[str, float] = {}
    line = f"run {stop.run_id} stopped: ownership_conflict"
    sql = f"SELECT count() FROM governance.decisions FINAL WHERE decision_id = '{stop.decision_id}'"

    def both() -> bool:
        if "alerted" not in seen and line in stack.alerts.log():
            seen["alerted"] = time.monotonic()
        if "audited" not in seen and stack.sink.query(sql)[0][0] == 1:
            seen["audited"] = time.monotonic()
        return len(seen) == 2

    wait_for(
        both,
        timeout,
        interval=0.2,
        message=lambda: f"{stop.run_id}'s stop audited and alerted ({seen})\n{stack.logs()}",
    )
    return seen["audited"], seen["alerted"]


def test_a_paused_broker_fails_clients_closed_and_everything_recovers_alone(
    pausable: PausableStack,
) -> None:
    stack = pausable
    pid = stack.broker.pid
    assert pid is not None
    with GovernanceClient(
        stack.broker.bootstrap, topic_prefix=stack.prefix, partitions=PARTITIONS
    ) as gov:
        before = _ownership_conflict(gov, f"run_before_{uuid.uuid4().hex[:6]}", 20)
        _audited_and_alerted(stack, before, 20)

        frozen_at = _freeze(pid)
        try:
            run = f"run_paused_{uuid.uuid4().hex[:6]}"
            asked = time.monotonic()
            request = handoff(run, 1, "t", "planner", "researcher")
            paused = gov.check(request, timeout=CHECK_TIMEOUT_S)
            waited = time.monotonic() - asked
            # fail closed, within the timeout: never an allow while governance is away
            # the whole decision when not: who decided it (worker, decided_at, chain) tells a
            # broker that was not frozen from a client that answered itself
            assert (paused.outcome, paused.reason) == (
                Outcome.STOP,
                "governance_unavailable",
            ), f"{paused!r}; broker threads now {_thread_states(pid)}"
            assert paused.fallback == "single_agent"
            assert waited < CHECK_TIMEOUT_S + 1.0, f"check took {waited:.1f} s"
            time.sleep(max(0.0, frozen_at + PAUSE_S - time.monotonic()))  # the fault itself
        finally:
            os.kill(pid, signal.SIGCONT)
        thawed_at = time.monotonic()

        after = _ownership_conflict(gov, f"run_after_{uuid.uuid4().hex[:6]}", 40)
        decided_in = time.monotonic() - thawed_at
        audited, alerted = _audited_and_alerted(stack, after, 40)
    assert not stack.dead(), f"{stack.dead()} exited:\n{stack.logs()}"
    # exact after the rejoin: re-read records fold in the audit, and within one process
    # the alerter announces a decision once
    runs = f"'{before.run_id}', '{after.run_id}'"
    assert stack.sink.query(
        f"SELECT count() FROM governance.decisions FINAL WHERE run_id IN ({runs})"
    ) == [(4,)]
    # the check the client gave up on reaches the requests topic after SIGCONT (its record is
    # delivered even when its decisions partition could not be assigned in the pause) and is
    # stopped (its decide_by passed), never a late allow that locks the task and counts a
    # handoff nobody makes
    late = wait_for(
        lambda: stack.sink.query(
            "SELECT outcome, reason FROM governance.decisions FINAL "
            f"WHERE run_id = '{request.run_id}' AND phase = 'pre_handoff'"
        ),
        60,  # on a loaded host the rejoin after SIGCONT alone took ~30 s
        message=lambda: (
            "the late check's decision in the audit; the run's rows: "
            + repr(
                stack.sink.query(
                    "SELECT phase, outcome, reason, request_id FROM governance.decisions "
                    f"WHERE run_id = '{request.run_id}'"
                )
            )
            + _on_topics(stack, request.run_id)
        ),
    )
    assert late == [("stop", "request_expired")], late
    for stop in (before, after):
        assert stack.alerts.log(10**6).count(f"run {stop.run_id} stopped") == 1, stop.run_id
    print(
        f"broker paused {PAUSE_S:g} s; the check during the pause failed closed in {waited:.2f} s;"
        f" after SIGCONT: decided in {decided_in:.1f} s, in ClickHouse after "
        f"{audited - thawed_at:.1f} s, alerted after {alerted - thawed_at:.1f} s"
    )


def _on_topics(stack: PausableStack, run_id: str) -> str:
    """Where the late check got to, for the failure message: its records on the requests and
    decisions topics, and the processes' logs."""
    catalog = TopicCatalog(prefix=stack.prefix, partitions=PARTITIONS, replication=1)
    found = []
    for topic, decisions in ((catalog.requests, False), (catalog.decisions, True)):
        reader = Collector(stack.broker.bootstrap, topic, decisions=decisions)
        try:
            time.sleep(3.0)
            if decisions:
                found.append(
                    f"{topic}: {[(d.phase, d.reason, d.reemitted) for d in reader.for_run(run_id)]}"
                )
            else:
                found.append(
                    f"{topic}: {sum(run_id.encode() in r for r in reader.records)} record(s)"
                )
        finally:
            reader.close()
    return "; " + "; ".join(found) + "\n" + stack.logs()


def test_a_check_whose_partition_cannot_be_assigned_in_a_pause_still_reaches_kafka(
    tmp_path: Path,
) -> None:
    """The client reads its decisions partition's end before producing a request; when that
    read times out (the broker frozen), the caller is answered at once (fail closed) and the
    record is still handed to librdkafka, which delivers it after SIGCONT. It used to be
    dropped: a check that vanished, never reaching Baton nor its audit."""
    with EmbeddedBroker(log_dir=tmp_path) as broker:
        prefix = f"g{uuid.uuid4().hex[:8]}."
        catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
        pid = broker.pid
        assert pid is not None
        request = handoff(f"run_gate_{uuid.uuid4().hex[:6]}", 1, "t", "planner", "researcher")
        with GovernanceClient(
            broker.bootstrap, topic_prefix=prefix, partitions=PARTITIONS, connect_timeout=1
        ) as gov:
            _freeze(pid)
            try:
                answer = gov.check(request, timeout=CHECK_TIMEOUT_S)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert (answer.outcome, answer.reason) == (Outcome.STOP, "governance_unavailable")
            # the path under test: the assignment failed (not the check's own timeout)
            assert "cannot read" in (answer.detail or ""), answer.detail
            assert gov.flush(10) == 0
            assert gov.channel.last_delivery_error() is None
        reader = Collector(broker.bootstrap, catalog.requests, decisions=False)
        try:
            wait_for(
                lambda: any(request.request_id.encode() in r for r in reader.records),  # type: ignore[operator]
                10,
                message=f"{request.request_id} on {catalog.requests}",
            )
        finally:
            reader.close()
