"""The control follower on a real broker: caught up past transactions, stale when cut off."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from baton.processors.control import ControlFollower
from baton.processors.exits import EXIT_CONTROL_LOST
from baton.schemas.events import KillSwitch
from baton.schemas.policy import DEFAULT_POLICY_YAML, parse_policy
from baton.streams.embedded import EmbeddedBroker
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def _topic(bootstrap: str, name: str) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(10)
    return name


def _kill(run_id: str) -> bytes:
    return KillSwitch(
        scope="run", run_id=run_id, operator="op", event_time=datetime.now(UTC)
    ).to_json()


def _committed_high(bootstrap: str, topic: str) -> int:
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "probe", "isolation.level": "read_committed"}
    )
    try:
        return int(c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)[1])
    finally:
        c.close()


def _txn_producer(bootstrap: str) -> Producer:
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"t-{uuid.uuid4().hex[:8]}"})
    p.init_transactions(30)
    return p


def _follower(bootstrap: str, topic: str, **kw: object) -> ControlFollower:
    return ControlFollower(
        {"bootstrap.servers": bootstrap},
        topic,
        parse_policy(DEFAULT_POLICY_YAML, "seed"),
        worker="w-test",
        on_decision=lambda d: None,
        on_dead_letter=lambda d: None,
        **kw,  # type: ignore[arg-type]
    )


_QUITTER = """
import logging, sys, time
from baton.processors.control import ControlFollower
from baton.schemas.policy import DEFAULT_POLICY_YAML, parse_policy
logging.basicConfig(level=logging.WARNING)
f = ControlFollower({"bootstrap.servers": sys.argv[1]}, sys.argv[2],
                    parse_policy(DEFAULT_POLICY_YAML, "seed"), worker="quitter",
                    on_decision=print, on_dead_letter=print,
                    max_staleness_s=1.0, give_up_after_s=3.0)
f.start()
if f.caught_up.wait(20):
    open(sys.argv[3], "w").close()
time.sleep(60)
"""


class _QuittingWorker:
    """A process whose follower's default give-up ends it (``exit_without_commit``)."""

    def __init__(self, bootstrap: str, topic: str, tmp: Path) -> None:
        self.ready = tmp / "quitter.ready"
        self._log = tmp / "quitter.log"
        with open(self._log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _QUITTER, bootstrap, topic, str(self.ready)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self._log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def followers() -> Iterator[list[ControlFollower]]:
    started: list[ControlFollower] = []
    try:
        yield started
    finally:
        for f in started:
            f.stop()


def test_a_control_topic_ending_in_a_commit_marker_is_caught_up_with_its_kill_switches(
    broker: EmbeddedBroker, topic_prefix: str, followers: list[ControlFollower]
) -> None:
    topic = _topic(broker.bootstrap, f"{topic_prefix}gov.control")
    p = _txn_producer(broker.bootstrap)
    p.begin_transaction()
    p.produce(topic, _kill("r1"))
    p.produce(topic, _kill("r2"))
    p.commit_transaction(30)
    # records at 0 and 1, the commit marker at 2: "offset high - 1 delivered" never held
    assert _committed_high(broker.bootstrap, topic) == 3

    f = _follower(broker.bootstrap, topic)
    followers.append(f)
    t0 = time.monotonic()
    f.start()
    assert f.caught_up.wait(10), f.why_stale()
    took = time.monotonic() - t0
    assert f.kills.runs == frozenset({"r1", "r2"})
    assert f.is_fresh()
    assert took < 5, f"caught up after {took:.1f} s"


def test_an_aborted_transaction_neither_applies_nor_blocks_caught_up(
    broker: EmbeddedBroker, topic_prefix: str, followers: list[ControlFollower]
) -> None:
    topic = _topic(broker.bootstrap, f"{topic_prefix}gov.control")
    p = _txn_producer(broker.bootstrap)
    p.begin_transaction()
    p.produce(topic, _kill("r1"))
    p.commit_transaction(30)
    p.begin_transaction()
    p.produce(topic, _kill("aborted"))
    p.abort_transaction(30)

    f = _follower(broker.bootstrap, topic)
    followers.append(f)
    f.start()
    assert f.caught_up.wait(10), f.why_stale()
    assert f.kills.runs == frozenset({"r1"})
    # and it goes on following: a kill switch committed afterwards applies
    p.begin_transaction()
    p.produce(topic, _kill("r3"))
    p.commit_transaction(30)
    wait_for(lambda: "r3" in f.kills.runs, 10, message=f.why_stale)


def test_a_missing_control_topic_is_never_caught_up_and_says_so(
    broker: EmbeddedBroker, topic_prefix: str, followers: list[ControlFollower]
) -> None:
    f = _follower(broker.bootstrap, f"{topic_prefix}gov.control", max_staleness_s=1.0)
    followers.append(f)
    f.start()
    wait_for(lambda: "Unknown topic or partition" in f.why_stale(), 10, message=f.why_stale)
    why = f.why_stale()
    assert f"control topic {topic_prefix}gov.control at {broker.bootstrap}" in why
    assert not f.caught_up.is_set()
    assert not f.is_fresh()


def test_a_frozen_broker_makes_the_follower_stale_within_the_bound_and_fresh_after_it_thaws(
    tmp_path: Path, followers: list[ControlFollower]
) -> None:
    # our own broker: SIGSTOP would freeze the session's broker for every other test
    broker = EmbeddedBroker(log_dir=tmp_path)
    broker.start()
    assert broker.pid is not None
    try:
        topic = _topic(broker.bootstrap, "gov.control")
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        producer.produce(topic, _kill("r1"))
        producer.flush(10)
        bound = 2.0
        watched = _follower(broker.bootstrap, topic, max_staleness_s=bound, give_up_after_s=60)
        followers.append(watched)
        watched.start()
        quitter = _QuittingWorker(broker.bootstrap, topic, tmp_path)  # bound 1 s, gives up at 3
        assert watched.caught_up.wait(10), watched.why_stale()
        wait_for(quitter.ready.exists, 20, message=quitter.output)
        assert watched.is_fresh() and watched.kills.runs == frozenset({"r1"})

        os.kill(broker.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            wait_for(lambda: not watched.is_fresh(), bound + 3, 0.02, watched.why_stale)
            stale_after = time.monotonic() - stopped_at
            why = watched.why_stale()
            with pytest.raises(TimeoutError):  # a batch would wait here, undecided
                asyncio.run(asyncio.wait_for(watched.wait_until_fresh(), 0.5))
            code = quitter.wait(3.0 + 3)
            gave_up_after = time.monotonic() - stopped_at
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        thawed_at = time.monotonic()
        asyncio.run(asyncio.wait_for(watched.wait_until_fresh(), 10))  # the batch goes on
        fresh_after = time.monotonic() - thawed_at

        # both count from the last complete read, up to one probe interval (bound / 5, at
        # most 1 s) before the SIGSTOP: never later than the limit, not long before it
        assert bound - 1.0 <= stale_after <= bound + 0.5, f"stale after {stale_after:.2f} s"
        assert f"control topic gov.control at {broker.bootstrap}" in why
        # the probe on its way has no answer yet, or has timed out by now
        assert "no answer to a probe sent" in why or "Timed out" in why, why
        assert fresh_after < 5, f"fresh again {fresh_after:.2f} s after SIGCONT"
        assert 3.0 - 0.5 <= gave_up_after <= 3.0 + 2.5, f"gave up after {gave_up_after:.2f} s"
        assert code == EXIT_CONTROL_LOST, quitter.output()
        assert "control follower gives up after 3 s: control topic gov.control" in quitter.output()
        # and it follows again: a kill switch sent after the thaw applies
        producer.produce(topic, _kill("r2"))
        producer.flush(10)
        wait_for(lambda: "r2" in watched.kills.runs, 10, message=watched.why_stale)
        print(
            f"stale {stale_after:.2f} s after SIGSTOP (bound {bound:g} s), gave up after "
            f"{gave_up_after:.2f} s (limit 3 s), fresh {fresh_after:.2f} s after SIGCONT"
        )
    finally:
        if "quitter" in locals():
            quitter.kill()
        for f in followers:
            f.stop()
        broker.stop()


def test_the_policy_in_force_is_said_again_while_fresh(
    broker: EmbeddedBroker, topic_prefix: str, followers: list[ControlFollower]
) -> None:
    """The worker records (and seals) the policy it decides under each time it is said: at its
    start, at each update, and every POLICY_RESTATED_EVERY_S while fresh, so the audit's
    retention never leaves a running stack without a sealed record of it (session 42)."""
    topic = _topic(broker.bootstrap, f"{topic_prefix}gov.control")
    said: list[str] = []
    f = _follower(broker.bootstrap, topic, restate_every_s=0.5)
    f.on_policy(lambda policy: said.append(policy.version))
    followers.append(f)
    f.start()
    assert f.caught_up.wait(10), f.why_stale()
    wait_for(lambda: len(said) >= 3, 10, message=lambda: f"said {said}")
    assert set(said) == {f.policy.version}
