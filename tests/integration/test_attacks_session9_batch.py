"""Session 9 attacks on the worker's batch path with a real broker and workers: a backlog of
good and hostile records, the worker killed (kill -9) in the middle of it, and a successor."""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict

import orjson
import pytest

from baton.schemas.decision import Outcome, Phase
from baton.streams.embedded import EmbeddedBroker
from tests.faults.test_worker_failover import _Restart
from tests.helpers import handoff_round, wait_for
from tests.stack import Collector, fresh_topics, wait_deciding

pytestmark = pytest.mark.integration

RUNS, ROUNDS, COST = 400, 4, 0.25


def _hostile(i: int, run: str) -> tuple[bytes | None, bytes | None]:
    """The i-th hostile record: (key, value), each kind a worker has been sent."""
    good = orjson.dumps(
        {"type": "handoff_requested", "request_id": f"x-{i}", "run_id": run, "task_id": "t",
         "from_agent": "planner", "to_agent": "researcher", "event_time": "2026-11-30T11:00:00Z"}
    )  # fmt: skip
    return [
        (None, good),  # no key
        (b"someone-else", good),  # a key that is not its run's
        (run.encode(), b"\xff\xfe not json"),
        (run.encode(), b'{"type":"handoff_requested","run_id":1e400}'),
        (run.encode(), b"{" + b"\x01" * 70_000 + b"}"),  # past the event size limit
        (run.encode(), b'{"type":"approval_granted"}'),  # an approval on the requests topic
    ][i % 6]


@pytest.mark.parametrize(
    ("guarantee", "how"),
    [
        ("at_least_once", "kill9"),
        ("exactly_once", "join"),
        # the other two pairs are soaks (36 s): each guarantee and each way of taking over
        # is in the default run once
        pytest.param("at_least_once", "join", marks=pytest.mark.soak),
        pytest.param("exactly_once", "kill9", marks=pytest.mark.soak),
    ],
    ids=["at_least_once-kill9", "exactly_once-join", "at_least_once-join", "exactly_once-kill9"],
)
def test_a_worker_killed_mid_backlog_with_hostile_records_loses_and_double_counts_nothing(
    broker: EmbeddedBroker, tmp_path, guarantee: str, how: str
) -> None:
    """Rounds of handoffs and completions of 400 runs with a hostile record after every 20
    events, all sent before the worker reads them; the worker is killed -9 mid-backlog and
    a successor takes over (or a second worker starts as the backlog is sent, and joins the
    group mid-backlog: a rebalance). Every request is answered once per phase, every cost
    counted once, and every hostile record is a dead letter naming its position (once under
    exactly-once; at least once otherwise)."""
    env = {"BATON_PROCESSING_GUARANTEE": guarantee}
    if how == "kill9":
        # the successor takes the killed worker's transactional id, so its start aborts the
        # transaction the kill left open: Tansu never times one out (the xfail test below)
        env["BATON_TRANSACTIONAL_ID"] = f"h5-{uuid.uuid4().hex[:8]}"
    rs = _Restart(broker, tmp_path, "h5", RUNS, env)
    decisions, runs, catalog = rs.decisions, rs.runs, rs.catalog
    dead = Collector(broker.bootstrap, catalog.deadletter, decisions=False)
    first = rs.worker("a")
    second = None
    try:
        wait_deciding(broker.bootstrap, catalog)
        if how == "join":
            second = rs.worker("b")  # joins while the first works through the backlog
        producer, sent = rs.sender.producer, [0]

        def send_round(i: int) -> None:
            """Round i, a hostile record after every 20 events, produced at once."""
            for n, event in enumerate(handoff_round(runs, i, COST, rs.now)):
                producer.produce(catalog.requests, event.to_json(), event.run_id.encode())
                if n % 20 == 19:
                    key, value = _hostile(sent[0], runs[sent[0] % RUNS])
                    producer.produce(catalog.requests, value, key)
                    sent[0] += 1
                producer.poll(0)
            assert producer.flush(30) == 0

        for i in range(1, ROUNDS):  # a backlog
            send_round(i)
            if how == "join":  # a round every 3 s: the join lands amid the rounds
                time.sleep(3)
        if how == "kill9":
            wait_for(lambda: len(decisions.records) > 600, 60, message="the backlog decided")
            first.kill9()
        send_round(ROUNDS)  # (after a kill: only the successor can answer it)
        if how == "kill9":
            second = rs.worker("b")
        hostile = sent[0]
        want = 2 * ROUNDS

        def answered() -> int:
            return sum(len({d.decision_id for d in decisions.for_run(r)}) >= want for r in runs)

        def lettered() -> set[tuple[int, int]]:
            docs = [orjson.loads(v) for v in list(dead.records)]
            return {(d["partition"], d["offset"]) for d in docs}

        wait_for(
            lambda: answered() == len(runs) and len(lettered()) >= hostile,
            150,
            interval=0.5,
            message=lambda: (
                f"{answered()} of {len(runs)} runs answered, {len(lettered())} of {hostile} "
                "dead letters\n" + second.log()[-2500:]
            ),
        )
        assert len({d.worker for d in decisions.records}) == 2, (
            "the second worker decided nothing: the kill or join came after the backlog"
        )
        for run in runs:
            got = decisions.for_run(run)
            answers: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
            for d in got:
                answers[d.request_id, d.phase].add((d.decision_id, d.outcome))
            assert len(answers) == want and all(len(a) == 1 for a in answers.values()), run
            assert all(d.outcome == Outcome.ALLOW for d in got if d.phase == Phase.PRE_HANDOFF)
            posts = [d for d in got if d.phase == Phase.POST_HANDOFF]
            assert max(d.spent_usd for d in posts) == pytest.approx(ROUNDS * COST), run
            if guarantee == "exactly_once":
                assert len(got) == want, (run, len(got), "published more than once")
        docs = [orjson.loads(v) for v in list(dead.records)]
        assert len(lettered()) == hostile
        assert all(d["topic"] == catalog.requests and d["error_kind"] for d in docs)
        kinds = Counter(d["error_kind"] for d in docs)
        assert set(kinds) >= {
            "missing_key",
            "key_mismatch",
            "not_json",
            "oversized",
            "out_of_range",
            "schema",
        }, kinds
        if guarantee == "exactly_once":
            assert len(docs) == hostile, "a dead letter published twice"
        assert all(len(v) < 1_000_000 for v in dead.records)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        decisions.close()
        dead.close()


def test_fresh_run_ids_filling_a_worker_leave_its_runs_decided_and_every_refusal_published(
    broker: EmbeddedBroker, tmp_path
) -> None:
    """BATON_MAX_RUNS 60, 40 real runs held; an attacker then sends 300 fresh run ids amid the
    real runs' next handoffs: the real runs are decided (allowed) as before, the worker takes
    on at most 20 of the attacker's runs, and each of the others gets a published stop,
    worker_run_limit, once."""
    rs = _Restart(broker, tmp_path, "mr", 40, {"BATON_MAX_RUNS": "60"})
    decisions, runs, catalog = rs.decisions, rs.runs, rs.catalog
    worker = rs.worker("a")
    try:
        wait_deciding(broker.bootstrap, catalog)
        rs.sender.send(rs.handoffs(1))
        wait_for(lambda: all(decisions.for_run(r) for r in runs), 30, message="first decisions")
        fresh = [f"attacker_{i}_{rs.prefix}" for i in range(300)]
        second = rs.handoffs(2)
        mixed: list = []
        for i, run in enumerate(fresh):
            mixed.append(handoff_round([run], 1, COST, rs.now)[0])
            if i % 7 == 0 and second:
                mixed.append(second.pop())
        mixed.extend(second)
        rs.sender.send(mixed)
        wait_for(
            lambda: (
                all(len(decisions.for_run(r)) >= 2 for r in runs)
                and all(decisions.for_run(r) for r in fresh)
            ),
            60,
            message=lambda: worker.log()[-2000:],
        )
        for run in runs:
            assert [(d.outcome, d.handoff_count) for d in decisions.for_run(run)] == [
                (Outcome.ALLOW, 1),
                (Outcome.ALLOW, 2),
            ], run
        answers = [decisions.for_run(r) for r in fresh]
        assert all(len(a) == 1 for a in answers)
        taken = [a[0] for a in answers if a[0].outcome == Outcome.ALLOW]
        refused = [a[0] for a in answers if a[0].outcome != Outcome.ALLOW]
        assert len(taken) <= 20 and len(refused) >= 280
        assert {(d.outcome, d.reason) for d in refused} == {(Outcome.STOP, "worker_run_limit")}
    finally:
        worker.stop()
        decisions.close()


_DIES_IN_A_TRANSACTION = r"""
import os, sys
from confluent_kafka import Producer
bootstrap, topic = sys.argv[1], sys.argv[2]
p = Producer({"bootstrap.servers": bootstrap, "transactional.id": "dies-" + topic,
              "transaction.timeout.ms": 10000})
p.init_transactions(10)
p.begin_transaction()
p.produce(topic, b"open", b"k", partition=0)
p.flush(10)
os._exit(0)  # as a worker killed -9 in the middle of a batch's transaction
"""


# soak: 31 s of waiting for what Tansu 0.6 never does, a pin on the broker, not on Baton's code
@pytest.mark.soak
@pytest.mark.xfail(
    strict=True,
    reason="Tansu (0.6, the embedded broker) does not abort a dead producer's transaction "
    "after its transaction.timeout.ms: a read_committed reader of the partition never gets "
    "past it (measured: nothing in 240 s). A worker killed -9 mid-transaction under "
    "exactly_once (its transactional id holds its pid: no successor fences it) holds back "
    "every later decision on those partitions for good; guarantees.md says 10 s. Seen once "
    "in 12 runs of the kill -9 test above (0 of 400 runs answered after 150 s)",
)
def test_a_transaction_left_open_by_a_killed_producer_holds_readers_back_only_its_timeout(
    broker: EmbeddedBroker, tmp_path
) -> None:
    import subprocess
    import sys

    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    catalog = fresh_topics(broker.bootstrap, f"tx{uuid.uuid4().hex[:8]}.", 1)
    topic = catalog.decisions
    subprocess.run(
        [sys.executable, "-c", _DIES_IN_A_TRANSACTION, broker.bootstrap, topic],
        check=True,
        timeout=60,
    )
    after = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": f"ok-{topic}"})
    after.init_transactions(10)
    after.begin_transaction()
    after.produce(topic, b"committed", b"k", partition=0)
    after.commit_transaction(10)
    reader = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"r-{topic}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    reader.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    try:
        deadline, seen = time.monotonic() + 30, []  # the 10 s timeout, and a margin
        while time.monotonic() < deadline and b"committed" not in seen:
            msg = reader.poll(0.5)
            if msg is not None and not msg.error():
                seen.append(msg.value())
        assert b"committed" in seen, "the dead producer's open transaction still holds it back"
    finally:
        reader.close()


@pytest.mark.xfail(
    strict=True,
    reason="Tansu (0.6) keeps a record an aborted transaction had sent (linger.ms 0 sends at "
    "once; a flush before the abort makes it certain) and read_committed readers get it like "
    "a committed one: a worker's aborted batch (a commit refused, a fenced generation) is "
    "published anyway, and a client's aborted events are governed; guarantees.md says never",
)
def test_a_record_of_an_aborted_transaction_is_never_read_committed(
    broker: EmbeddedBroker,
) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    catalog = fresh_topics(broker.bootstrap, f"ab{uuid.uuid4().hex[:8]}.", 1)
    topic = catalog.requests
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": f"ab-{topic}"})
    producer.init_transactions(10)
    for value, commit in ((b"first", True), (b"aborted", False), (b"last", True)):
        producer.begin_transaction()
        producer.produce(topic, value, b"k", partition=0)
        producer.flush(10)  # on the broker, as a batch's records are before its commit
        if commit:
            producer.commit_transaction(10)
        else:
            producer.abort_transaction(10)
    reader = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"r-{topic}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    reader.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    try:
        seen: list[bytes] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and b"last" not in seen:
            msg = reader.poll(0.5)
            if msg is not None and not msg.error():
                seen.append(msg.value())
        assert seen == [b"first", b"last"]
    finally:
        reader.close()
