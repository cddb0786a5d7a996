"""Session 10's attacks on the control plane through a real broker and worker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from baton.schemas.decision import Outcome, Reason
from baton.schemas.events import KillSwitch
from baton.streams.embedded import EmbeddedBroker
from tests.helpers import handoff, wait_for
from tests.stack import (
    Collector,
    EventSender,
    WorkerProcess,
    fresh_topics,
    open_transaction,
    wait_deciding,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A broker of this module's own: Tansu keeps records in memory, and the 120 MB record
    is gone with it."""
    broker = EmbeddedBroker(log_dir=tmp_path_factory.mktemp("tansu10"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_120_mb_record_on_the_control_topic_does_not_keep_workers_from_starting(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Tansu takes a 120 MB record (it ignores max.message.bytes); librdkafka received no
    fetch answer past 100 MB ("Invalid response size ... increase receive.message.max.bytes"),
    so the control follower never read past it: every worker gave up after 10 x the staleness
    bound and exited, and every restart read the same record (no worker ever decided). Now it
    is read, and dead-lettered as oversized; the kill switch after it is applied."""
    prefix = f"x{uuid.uuid4().hex[:8]}."
    catalog = fresh_topics(own_broker.bootstrap, prefix, PARTITIONS)
    producer = Producer(
        {"bootstrap.servers": own_broker.bootstrap, "message.max.bytes": 1_000_000_000}
    )
    errors: list[object] = []
    producer.produce(
        catalog.control, b"x" * 120_000_000, partition=0, on_delivery=lambda e, m: errors.append(e)
    )
    kill = KillSwitch(
        scope="run", run_id="r-killed", operator="oncall", event_time=datetime.now(UTC)
    )
    producer.produce(catalog.control, kill.to_json(), partition=0)
    assert producer.flush(60) == 0 and errors == [None]
    letters = Collector(own_broker.bootstrap, catalog.deadletter, decisions=False)
    decisions = Collector(own_broker.bootstrap, catalog.decisions)
    policy = tmp_path / "policy.yaml"
    policy.write_text("multi_agent: {max_handoffs: 8}\n")
    worker = WorkerProcess(
        own_broker.bootstrap,
        prefix,
        tmp_path,
        partitions=PARTITIONS,
        policy=policy,
        extra_env={"BATON_CONTROL_MAX_STALENESS_S": "5"},
    )
    try:
        wait_deciding(own_broker.bootstrap, catalog, timeout=90)
        EventSender(own_broker.bootstrap, catalog.requests).send(
            [handoff("r-killed", 1, "t1", "planner", "writer")]
        )
        recorded, decided = decisions.wait_run("r-killed", 2)  # the kill's record, the stop
        assert recorded.reason == Reason.KILL_SWITCH
        assert (decided.outcome, decided.reason) == (Outcome.STOP, Reason.KILLED)
        letter = wait_for(
            lambda: next(
                (
                    doc
                    for doc in map(orjson.loads, list(letters.records))
                    if doc.get("topic") == catalog.control
                ),
                None,
            ),
            30,
            message="the huge record's dead letter",
        )
        assert letter["error_kind"] == "oversized" and letter["original_size"] == 120_000_000
        assert worker.alive(), worker.log()
    finally:
        worker.stop()
        letters.close()
        decisions.close()


def test_a_transaction_left_open_on_the_control_topic_does_not_hide_later_kill_switches(
    own_broker: EmbeddedBroker,
) -> None:
    """A writer of gov.control begins a transaction, sends a record and never commits (Tansu
    never aborts it; Kafka after transaction.timeout.ms, unless the next one began first).
    Read read_committed, the last stable offset stayed there: a kill switch the broker
    acknowledged after it was not applied 20 s later, and the follower called itself fresh
    all along (staleness 0.5 s): decisions under no kill switch, as if it were in force."""
    from baton.processors.control import ControlFollower
    from baton.schemas.policy import DEFAULT_POLICY_YAML, parse_policy

    topic = f"t{uuid.uuid4().hex[:8]}.gov.control"
    admin = AdminClient({"bootstrap.servers": own_broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    plain = Producer({"bootstrap.servers": own_broker.bootstrap})
    plain.produce(topic, _kill("r1"))
    plain.flush(10)
    follower = ControlFollower(
        {"bootstrap.servers": own_broker.bootstrap},
        topic,
        parse_policy(DEFAULT_POLICY_YAML, "seed"),
        worker="w1",
        on_decision=lambda d: None,
        on_dead_letter=lambda d: None,
        max_staleness_s=2.0,
    )
    follower.start()
    try:
        assert follower.caught_up.wait(15), follower.why_stale()
        attacker = open_transaction(own_broker.bootstrap, topic)  # noqa: F841 (kept open)
        plain.produce(topic, _kill("r2"))
        assert plain.flush(10) == 0
        wait_for(
            lambda: "r2" in follower.kills.runs,
            10,
            message=lambda: (
                f"r2's kill applied (fresh={follower.is_fresh()}, "
                f"kills={sorted(follower.kills.runs)}): {follower.why_stale()}"
            ),
        )
        assert follower.is_fresh()
    finally:
        follower.stop()


def _kill(run_id: str) -> bytes:
    event = KillSwitch(scope="run", run_id=run_id, operator="op", event_time=datetime.now(UTC))
    return event.to_json()


def test_baton_policy_current_reads_past_a_transaction_left_open(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """`baton policy current` read as the workers did (read_committed): past a transaction
    left open it saw no later update and named the --policy file's policy as in force."""
    from baton.schemas.policy import parse_policy

    prefix = f"c{uuid.uuid4().hex[:8]}."
    catalog = fresh_topics(own_broker.bootstrap, prefix, PARTITIONS)
    attacker = open_transaction(own_broker.bootstrap, catalog.control, 0)  # noqa: F841
    newer = "multi_agent: {max_handoffs: 3}\n"
    update = {
        "type": "policy_updated",
        "policy_yaml": newer,
        "operator": "oncall",
        "event_time": datetime.now(UTC).isoformat(),
    }
    EventSender(own_broker.bootstrap, catalog.control).send_raw(orjson.dumps(update), b"policy")
    output = _policy_current(own_broker, prefix, tmp_path)
    assert f"policy in force: {parse_policy(newer).version}" in output, output


def test_baton_policy_current_reads_a_batch_of_commands_to_its_last(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """H1 (session 27): `baton up`'s restore re-issues its commands in one record batch, and
    Tansu's ListOffsets answers that batch's first offset + 1: `policy current` (and doctor)
    stopped after the first command and named the --policy file's policy, not the update."""
    from baton.schemas.policy import parse_policy

    prefix = f"c{uuid.uuid4().hex[:8]}."
    catalog = fresh_topics(own_broker.bootstrap, prefix, PARTITIONS)
    now = datetime.now(UTC)
    kills = [
        KillSwitch(scope="run", run_id=f"run-{n}", operator="oncall", event_time=now)
        for n in range(5)
    ]
    newer = "multi_agent: {max_handoffs: 3}\n"
    update = {"type": "policy_updated", "policy_yaml": newer, "operator": "oncall",
              "event_time": now.isoformat()}  # fmt: skip
    producer = Producer({"bootstrap.servers": own_broker.bootstrap, "linger.ms": 200})
    for kill in kills:
        producer.produce(catalog.control, kill.to_json(), b"kill", partition=0)
    producer.produce(catalog.control, orjson.dumps(update), b"policy", partition=0)
    assert producer.flush(10) == 0
    output = _policy_current(own_broker, prefix, tmp_path)
    assert f"policy in force: {parse_policy(newer).version}" in output, output
    assert f"{catalog.control}[0]@5" in output, output


def _policy_current(broker: EmbeddedBroker, prefix: str, tmp_path: Path) -> str:
    """`baton policy current` with a --policy file of max_handoffs 8, on ``prefix``'s topics:
    its output, once it exited 0."""
    from click.testing import CliRunner

    from baton.cli.main import _register, cli

    policy = tmp_path / "policy.yaml"
    policy.write_text("multi_agent: {max_handoffs: 8}\n")
    _register()
    result = CliRunner().invoke(
        cli,
        ["policy", "current", "--policy", str(policy), "--timeout", "20"],
        env={"BATON_BOOTSTRAP": broker.bootstrap, "BATON_TOPIC_PREFIX": prefix},
    )
    assert result.exit_code == 0, result.output
    return result.output
