"""Signed decisions (schemas/decision_signing.py): real workers sign, real clients check.

A writer of gov.decisions (anyone, on the embedded broker) answered an SDK client's check with
a forged ``allow``: the client took it. With BATON_DECISION_SIGNING_KEY the workers sign every
decision record, and a client given the public key takes only what they signed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from baton.processors.recorded import input_text
from baton.schemas.decision import Decision, Outcome, Phase, decision_id_for
from baton.schemas.decision_signing import FIELD, decision_keys
from baton.schemas.events import HandoffRequested, parse_event
from baton.schemas.signing import new_private_key, public_key_text, write_private_key
from baton.streams.client import GovernanceClient
from baton.streams.embedded import EmbeddedBroker
from baton.streams.partitioner import partition_for
from tests.helpers import handoff, wait_for
from tests.integration.conftest import PARTITIONS, TEST_POLICY, Stack, one_worker_stack
from tests.stack import fresh_topics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "workers.key"
    write_private_key(new_private_key(), path)
    return path


@pytest.fixture(scope="module")
def public(key_file: Path) -> str:
    from baton.schemas.signing import load_private_key

    return public_key_text(load_private_key(key_file))


# the default (aiokafka's producer, at least once) and librdkafka's (exactly once): both sign
@pytest.fixture(scope="module", params=["at_least_once", "exactly_once"])
def signing_stack(
    broker: EmbeddedBroker,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
    key_file: Path,
) -> Iterator[Stack]:
    env = {"BATON_DECISION_SIGNING_KEY": str(key_file)}
    workdir = tmp_path_factory.mktemp("signing")
    with one_worker_stack(broker, workdir, TEST_POLICY, "sg", request.param, env) as s:
        yield s


def _records(bootstrap: str, topic: str, run_id: str, n: int) -> list[bytes]:
    """The values of the first ``n`` records of ``run_id`` on ``topic``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "x", "log_level": 0})
    part = partition_for(run_id.encode(), PARTITIONS)
    consumer.assign([TopicPartition(topic, part, OFFSET_BEGINNING)])
    found: list[bytes] = []

    def more() -> bool:
        for msg in consumer.consume(100, 0.5):
            if msg.error() is None and msg.key() == run_id.encode():
                found.append(msg.value())
        return len(found) >= n

    try:
        wait_for(more, 30, message=lambda: f"{n} records of {run_id} on {topic}: {len(found)}")
    finally:
        consumer.close()
    return found


def test_every_decision_and_stop_is_signed_by_the_workers_key(
    signing_stack: Stack, public: str
) -> None:
    s = signing_stack
    run = f"sig-{uuid.uuid4().hex[:8]}"
    s.requests.send(
        [
            handoff(run, 1, "t1", "planner", "researcher"),
            handoff(run, 2, "t1", "planner", "writer"),  # ownership_conflict: a stop
        ]
    )
    decided = _records(s.bootstrap, s.catalog.decisions, run, 2)
    stops = _records(s.bootstrap, s.catalog.stops, run, 1)
    keys = decision_keys([public])
    outcomes = [Decision.from_json(v).outcome for v in decided]
    assert outcomes == [Outcome.ALLOW, Outcome.STOP]
    for value in [*decided, *stops]:
        assert keys.verifies(value), value[-120:]
        assert list(orjson.loads(value))[-1] == FIELD  # its last member: readers ignore it
    # a signature covers the value: one byte changed, or another key, and it does not verify
    value = decided[0]
    assert not keys.verifies(value.replace(b'"allow"', b'"allOw"'))
    assert not decision_keys([public_key_text(new_private_key())]).verifies(value)


def test_a_client_given_the_key_takes_the_workers_decisions(
    signing_stack: Stack, public: str
) -> None:
    s = signing_stack
    run = f"sig-{uuid.uuid4().hex[:8]}"
    with GovernanceClient(
        s.bootstrap, topic_prefix=s.prefix, timeout=20, decision_keys=[public]
    ) as client:
        first = client.check(handoff(run, 1, "t1", "planner", "researcher"))
        second = client.check(handoff(run, 2, "t1", "planner", "writer"))
        assert (first.outcome, first.reason) == (Outcome.ALLOW, "ok")
        assert (second.outcome, second.reason) == (Outcome.STOP, "ownership_conflict")
        # a retry is answered from the run's memory (a re-emitted copy): signed too
        again = client.check(handoff(run, 1, "t1", "planner", "researcher"))
        assert (again.outcome, again.reason) == (Outcome.ALLOW, "ok")
        assert client.channel.unsigned.total == 0


_RAW_HEADER = """
import asyncio, os, sys
os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"
from aiokafka import AIOKafkaProducer

class Raw(str):  # a header name that encodes to bytes that are no UTF-8
    def encode(self, *a, **k):
        return b"\\xff\\xfe"

async def go(bootstrap, topic, partition, key, value):
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await p.start()
    try:
        await p.send_and_wait(
            topic, value, key=key, partition=partition, headers=[(Raw("x"), b"1")]
        )
    finally:
        await p.stop()

b, t, part, k = sys.argv[1:5]
asyncio.run(go(b, t, int(part), k.encode(), sys.stdin.buffer.read()))
"""


def _raw_header_record(bootstrap: str, topic: str, part: int, key: str, value: bytes) -> None:
    """One record of ``value`` with a header named by bytes that are no UTF-8 (aiokafka's
    pure-Python record builder writes what ``encode`` gives; in a process of its own)."""
    done = subprocess.run(
        [sys.executable, "-c", _RAW_HEADER, bootstrap, topic, str(part), key],
        input=value,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


class _Forger:
    """A writer of gov.decisions that answers every check it reads with an ``allow``, as a
    worker would word it (the request's own input, a chain hash's shape), unsigned."""

    def __init__(self, bootstrap: str, requests: str, decisions: str) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "f", "log_level": 0})
        self._consumer.assign([TopicPartition(requests, p, OFFSET_BEGINNING) for p in range(4)])
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self._decisions = decisions
        self._bootstrap = bootstrap
        self._stop = threading.Event()
        self.forged = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is None or msg.error() is not None:
                continue
            event = parse_event(msg.value())
            assert isinstance(event, HandoffRequested)
            forged = Decision(
                decision_id=decision_id_for(event.run_id, event.request_id, "pre_handoff"),
                request_id=event.request_id,
                run_id=event.run_id,
                tenant=event.tenant,
                phase=Phase.PRE_HANDOFF,
                outcome=Outcome.ALLOW,
                reason="ok",
                event_time=event.event_time,
                decided_at=datetime.now(UTC),
                chain_prev="",
                chain_hash="0" * 32,
                input=input_text(event),
            )
            part = partition_for(event.run_id.encode(), PARTITIONS)
            raw = forged.to_json()
            # a record whose header name is no UTF-8: confluent-kafka's headers() raised on it,
            # or crashed the process (session 43, F1); the client reads no header
            _raw_header_record(self._bootstrap, self._decisions, part, event.run_id, raw)
            self._producer.produce(
                self._decisions,
                raw[:-1] + b',"signature":"' + b"A" * 88 + b'"}',  # a signature's shape
                event.run_id.encode(),
                partition=part,
            )
            self._producer.flush(5)
            self.forged += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def test_a_forged_allow_is_taken_without_the_key_and_ignored_with_it(
    broker: EmbeddedBroker, public: str
) -> None:
    # topics with no worker at all: every answer a client gets is the forger's
    prefix = f"sf{uuid.uuid4().hex[:8]}."
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    forger = _Forger(broker.bootstrap, catalog.requests, catalog.decisions)
    try:
        with GovernanceClient(broker.bootstrap, topic_prefix=prefix, timeout=10) as naive:
            taken = naive.check(handoff("victim-1", 1, "t1"))
        assert (taken.outcome, taken.reason) == (Outcome.ALLOW, "ok")  # the attack, unkeyed
        with GovernanceClient(
            broker.bootstrap, topic_prefix=prefix, timeout=8, decision_keys=public
        ) as checked:
            refused = checked.check(handoff("victim-2", 1, "t1"))
            ignored = checked.channel.unsigned.total
            reader = checked.channel._thread
            assert reader is not None and reader.is_alive()  # it lives on (F1)
        assert forger.forged == 2
        assert (refused.outcome, refused.reason) == (Outcome.STOP, "governance_unavailable")
        assert ignored == 2  # the record of the raw header name, the signature's shape
        assert "2 decision(s) for it ignored: signed by no key of decision_keys" in (
            refused.detail or ""
        )
    finally:
        forger.close()


def test_a_client_with_another_key_fails_closed_naming_it(
    signing_stack: Stack,
) -> None:
    s = signing_stack
    other = public_key_text(new_private_key())
    with GovernanceClient(
        s.bootstrap, topic_prefix=s.prefix, timeout=3, decision_keys=other
    ) as client:
        d = client.check(handoff(f"sig-{uuid.uuid4().hex[:8]}", 1, "t1"))
    assert (d.outcome, d.reason) == (Outcome.STOP, "governance_unavailable")
    assert "ignored" in (d.detail or ""), d.detail


def test_a_fail_open_client_never_turns_an_ignored_answer_into_an_allow(
    signing_stack: Stack,
) -> None:
    """The worker's signed stop, ignored by a client with another key (a stale
    BATON_DECISION_KEYS, a rotation in the wrong order): at the timeout a fail-open client
    allowed what the worker stopped (session 43, F2). An answer came: it fails closed."""
    s = signing_stack
    run = f"sig-{uuid.uuid4().hex[:8]}"
    s.requests.send([handoff(run, 1, "t1", "planner", "researcher")])
    s.decisions.wait_run(run, 1)
    other = public_key_text(new_private_key())
    with GovernanceClient(
        s.bootstrap, topic_prefix=s.prefix, timeout=3, fail_open=True, decision_keys=other
    ) as client:
        d = client.check(handoff(run, 2, "t1", "planner", "writer"))  # ownership_conflict
    assert (d.outcome, d.reason) == (Outcome.STOP, "governance_unavailable"), d
    assert "ignored" in (d.detail or "")


def test_bad_decision_keys_are_refused_before_anything_connects() -> None:
    with pytest.raises(ValueError, match=r"decision_keys\[0\]: must look like"):
        GovernanceClient("127.0.0.1:1", decision_keys=["not-a-key"])
    with pytest.raises(ValueError, match="BATON_DECISION_KEYS"):
        import os

        os.environ["BATON_DECISION_KEYS"] = "ed25519:AAAA"
        try:
            GovernanceClient("127.0.0.1:1")
        finally:
            del os.environ["BATON_DECISION_KEYS"]


def test_policy_publish_reads_only_the_workers_signed_policy_record(
    signing_stack: Stack, public: str, key_file: Path
) -> None:
    """`baton policy publish` compares a new policy against the one the workers recorded in
    force; one forged unsigned record on gov.decisions was taken for it (and hid the
    "security change" lines: session 43, F10). With the workers' key it is skipped."""
    from baton.cli.options import build_settings
    from baton.cli.policy_workers import workers_policy

    s = signing_stack
    star = partition_for(b"*", PARTITIONS)
    consumer = Consumer({"bootstrap.servers": s.bootstrap, "group.id": "p", "log_level": 0})
    consumer.assign([TopicPartition(s.catalog.decisions, star, OFFSET_BEGINNING)])
    found: list[bytes] = []
    try:
        wait_for(
            lambda: (
                found.extend(
                    m.value()
                    for m in consumer.consume(100, 0.5)
                    if m.error() is None and b'"policy_in_force"' in (m.value() or b"")
                )
                or found
            ),
            30,
            message="the worker's policy_in_force record",
        )
    finally:
        consumer.close()
    doc = orjson.loads(found[-1])
    doc.pop(FIELD)
    doc["worker"] = "forged-by-a-writer"
    producer = Producer({"bootstrap.servers": s.bootstrap})
    producer.produce(s.catalog.decisions, orjson.dumps(doc), b"*", partition=star)
    assert producer.flush(10) == 0
    unkeyed = build_settings(bootstrap=s.bootstrap, topic_prefix=s.prefix)
    keyed = build_settings(bootstrap=s.bootstrap, topic_prefix=s.prefix, decision_keys=public)
    taken = workers_policy(unkeyed, 10)
    assert taken is not None and taken.worker == "forged-by-a-writer"  # the attack, unkeyed
    checked = workers_policy(keyed, 10)
    assert checked is not None and checked.worker != "forged-by-a-writer"
    # a record the workers really signed, but older, copied to the end: the newest by its
    # signed time is the one in force (h43b F2: the last in the topic was taken)
    from datetime import timedelta

    from baton.schemas.decision_signing import DecisionSigner
    from baton.schemas.signing import load_private_key

    old = orjson.loads(found[-1])
    old.pop(FIELD)
    old["worker"] = "an-earlier-start"
    old["decided_at"] = (checked.at - timedelta(days=1)).isoformat()
    signer = DecisionSigner(load_private_key(key_file))
    producer.produce(s.catalog.decisions, signer.signed(orjson.dumps(old)), b"*", partition=star)
    assert producer.flush(10) == 0
    assert decision_keys(public).verifies(signer.signed(orjson.dumps(old)))
    again = workers_policy(keyed, 10)
    assert again is not None and again.worker == checked.worker, again.describe()


def test_baton_tail_marks_a_decision_the_workers_did_not_sign(
    signing_stack: Stack, public: str
) -> None:
    s = signing_stack
    run = f"sig-{uuid.uuid4().hex[:8]}"
    s.requests.send([handoff(run, 1, "t1", "planner", "researcher")])
    real = s.decisions.wait_run(run, 1)[0]
    forged = Decision(**{**real.to_dict(), "request_id": "forged", "reason": "ok"})
    producer = Producer({"bootstrap.servers": s.bootstrap})
    part = partition_for(run.encode(), PARTITIONS)
    producer.produce(s.catalog.decisions, forged.to_json(), run.encode(), partition=part)
    assert producer.flush(10) == 0
    argv = [sys.executable, "-m", "baton.cli", "tail", "decisions", "--from-beginning"]
    argv += ["--run", run, "--bootstrap", s.bootstrap, "--topic-prefix", s.prefix]
    env = {**__import__("os").environ, "BATON_DECISION_KEYS": public}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60).stdout
    lines = [ln for ln in out.splitlines() if run in ln]
    assert len(lines) == 2, out
    assert "UNSIGNED" not in lines[0] and lines[1].endswith(
        "UNSIGNED: no key of decision_keys signed it (forged?)"
    ), lines
    # a JSON line of it carries the mark as a member, the workers' does not
    out = subprocess.run([*argv, "--format", "json"], capture_output=True, text=True, env=env,
                         timeout=60).stdout  # fmt: skip
    docs = [orjson.loads(ln) for ln in out.splitlines() if run in ln]
    assert [d.get("unsigned") for d in docs] == [
        None, "no key of decision_keys signed it (forged?)"
    ], docs  # fmt: skip
    # without keys nothing is marked (nothing to check with)
    env.pop("BATON_DECISION_KEYS")
    plain = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60).stdout
    assert "UNSIGNED" not in plain and plain.count(run) == 2


def test_the_alerter_given_the_keys_announces_only_the_workers_stops(
    signing_stack: Stack, public: str
) -> None:
    """A writer of gov.stops paged on-call with any stop it liked (h43b F4): an alerter given
    the workers' keys announces their signed stop, and skips a forged one, counted
    (``unsigned``); without keys it announces both, as before."""
    from baton.schemas.settings import Settings
    from baton.sinks.alerts import run_alerts

    s = signing_stack
    run = f"sig-{uuid.uuid4().hex[:8]}"
    s.requests.send(
        [handoff(run, 1, "t1", "planner", "researcher"), handoff(run, 2, "t1", "planner", "x")]
    )
    real = Decision.from_json(_records(s.bootstrap, s.catalog.stops, run, 1)[0])
    forged = Decision(**{**real.to_dict(), "decision_id": "f" * 32, "reason": "forged_stop"})
    producer = Producer({"bootstrap.servers": s.bootstrap})
    part = partition_for(run.encode(), PARTITIONS)
    producer.produce(s.catalog.stops, forged.to_json(), run.encode(), partition=part)
    assert producer.flush(10) == 0

    def alerts(keys: str | None) -> tuple[list[str], dict[str, int]]:
        lines: list[str] = []
        done = threading.Event()
        stats: list = []
        settings = Settings(bootstrap=s.bootstrap, **({"decision_keys": keys} if keys else {}))
        thread = threading.Thread(
            target=lambda: stats.append(
                run_alerts(settings, done, topic=s.catalog.stops, group_id=uuid.uuid4().hex,
                           emit=lines.append,
                           storm_threshold=0, max_age_s=3600)
            ),
            daemon=True,
        )  # fmt: skip
        thread.start()
        try:
            wait_for(lambda: sum(run in ln for ln in lines) >= (1 if keys else 2), 30,
                     message=lambda: f"alerts of {run}: {lines}")  # fmt: skip
            time.sleep(1)  # (what else it would announce)
        finally:
            done.set()
            thread.join(30)
        return [ln for ln in lines if run in ln], dict(stats[0].skipped)

    keyed, skipped = alerts(public)
    assert len(keyed) == 1 and "forged_stop" not in keyed[0], keyed
    assert skipped.get("unsigned") == 1, skipped
    plain, skipped = alerts(None)
    assert len(plain) == 2 and any("forged_stop" in ln for ln in plain), plain
    assert "unsigned" not in skipped


def test_the_readiness_probe_given_the_keys_waits_for_a_signed_answer(
    broker: EmbeddedBroker, public: str
) -> None:
    """`baton up`'s readiness probe took any decision record answering its probe run: a writer
    of gov.decisions answering it made `baton up` say ready with no worker deciding. Given the
    workers' key it waits for their signed answer (no worker on these topics: it times out).
    That it takes the signing workers' own answer, every `baton up` of the suite shows (its
    probe is given its stack's key: tests/integration/test_up.py)."""
    from baton.processors.probe import wait_until_deciding
    from baton.schemas.errors import BrokerUnavailable

    catalog = fresh_topics(broker.bootstrap, f"probe{uuid.uuid4().hex[:6]}", PARTITIONS)
    conf = {"bootstrap.servers": broker.bootstrap}
    stop = threading.Event()

    def forger() -> None:  # answers each probe event on the empty topics with a forged record
        consumer = Consumer({**conf, "group.id": uuid.uuid4().hex, "log_level": 0})
        parts = range(PARTITIONS)
        consumer.assign([TopicPartition(catalog.requests, p, OFFSET_BEGINNING) for p in parts])
        producer = Producer(conf)
        try:
            while not stop.is_set():
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                event = orjson.loads(msg.value())
                forged = Decision(
                    decision_id=uuid.uuid4().hex, request_id=event["run_id"],
                    run_id=event["run_id"], tenant="__baton__", phase=Phase.POST_HANDOFF,
                    outcome=Outcome.RECORDED, reason="ok", decided_at=datetime.now(UTC),
                )  # fmt: skip
                producer.produce(catalog.decisions, forged.to_json(), msg.key(), msg.partition())
                producer.flush(5)
        finally:
            consumer.close()

    thread = threading.Thread(target=forger, daemon=True)
    thread.start()
    try:
        took = wait_until_deciding(
            conf, catalog.requests, catalog.decisions, PARTITIONS, timeout_s=30
        )
        assert took < 30  # without the keys, the forger's answer is taken
        with pytest.raises(BrokerUnavailable, match="no Baton worker answered"):
            wait_until_deciding(conf, catalog.requests, catalog.decisions, PARTITIONS,
                                timeout_s=8, keys=decision_keys(public))  # fmt: skip
    finally:
        stop.set()
        thread.join(5)
