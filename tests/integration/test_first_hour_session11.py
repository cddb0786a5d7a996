"""Session 11's first hour against the session's broker: `baton send` to a broker without
Baton's topics says so (it auto-created them with Tansu's partition count), and the SDK and
`baton send` still reach a broker that answers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from baton.streams.embedded import EmbeddedBroker

pytestmark = pytest.mark.integration

BATON = [sys.executable, "-m", "baton.cli"]
#: librdkafka's lines of the test's own clients (not stderr after the session broker stops)
_LOG = logging.getLogger("tests.first_hour_session11")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return {**env, "NO_COLOR": "1", "BATON_CONNECT_TIMEOUT_S": "5"}


def _topics(broker: EmbeddedBroker) -> set[str]:
    producer = Producer({"bootstrap.servers": broker.bootstrap, "logger": _LOG})
    return set(producer.list_topics(timeout=10).topics)


def test_send_to_a_broker_without_baton_s_topics_says_so_and_creates_none(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    event = {
        "type": "handoff_requested", "request_id": "h1", "run_id": "r1", "task_id": "t1",
        "from_agent": "planner", "to_agent": "researcher", "event_time": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    events.write_text(json.dumps(event) + "\n")
    started = time.monotonic()
    done = subprocess.run(
        [*BATON, "send", str(events), "--bootstrap", broker.bootstrap,
         "--topic-prefix", topic_prefix],
        env=_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert done.stderr == (
        f"baton: error: Kafka at {broker.bootstrap} has no topic {topic_prefix}gov.handoff."
        f"requests, {topic_prefix}gov.approvals: start Baton there (`baton up`, or `baton "
        f"worker`), or set the topic prefix it uses (--topic-prefix, BATON_TOPIC_PREFIX, now "
        f"{topic_prefix!r})\n"
    )
    assert time.monotonic() - started < 30
    assert not [t for t in _topics(broker) if t.startswith(topic_prefix)]


def test_replay_from_kafka_of_a_prefix_without_topics_names_the_address(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    # it said "cannot read p.gov.handoff.requests: KafkaError{code=UNKNOWN_TOPIC_OR_PART,...}";
    # it reads gov.decisions since session 20 (the request topics with --redecide)
    policy = Path(__file__).resolve().parents[2] / "policy.example.yaml"
    done = subprocess.run(
        [*BATON, "replay", "--policy", str(policy), "--from-kafka", "--bootstrap",
         broker.bootstrap],
        env={**_env(), "BATON_TOPIC_PREFIX": topic_prefix},
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert done.stderr == (
        f"baton: error: no topic {topic_prefix}gov.decisions at {broker.bootstrap}; is "
        "BATON_TOPIC_PREFIX right, and has a worker started there (it creates the topics)?\n"
    )


def test_replay_from_kafka_leaves_the_readiness_probes_out(
    broker: EmbeddedBroker, topic_prefix: str, tmp_path: Path
) -> None:
    # every `baton up` and `baton doctor` sends a probe (a run_finished of a __probe_ run,
    # tenant __baton__): each was listed under "partial, not replayed", "its history does not
    # start in what was read", which no recorded run of the reader's was
    from datetime import UTC, datetime

    from baton.processors.probe import PROBE_TENANT
    from baton.schemas.events import HandoffRequested, RunFinished
    from tests.stack import fresh_topics

    catalog = fresh_topics(broker.bootstrap, topic_prefix, 8)
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "partitioner": "murmur2_random", "logger": _LOG}
    )
    for run_id, tenant in (("__probe_0123456789ab", PROBE_TENANT), ("__probe_not_one", "acme")):
        event = RunFinished(run_id=run_id, tenant=tenant, event_time=datetime.now(UTC))
        producer.produce(catalog.requests, event.to_json(), run_id.encode())
    handoff = HandoffRequested(
        request_id="h1", run_id="run_1", task_id="t1", from_agent="planner",
        to_agent="researcher", event_time=datetime.now(UTC),
    )  # fmt: skip
    producer.produce(catalog.requests, handoff.to_json(), b"run_1")
    assert producer.flush(10) == 0
    policy = Path(__file__).resolve().parents[2] / "policy.example.yaml"
    done = subprocess.run(
        [*BATON, "replay", "--policy", str(policy), "--from-kafka", "--redecide",
         "--bootstrap", broker.bootstrap, "--format", "json"],
        env={**_env(), "BATON_TOPIC_PREFIX": topic_prefix, "BATON_PARTITIONS": "8"},
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "__probe_0123456789ab" not in done.stdout
    # a client's run under that name is not a probe: replayed from its first event (a run's
    # first event read begins it, session 19), as run_1 is; the probe would be a third
    assert json.loads(done.stdout)["runs"] == 2, done.stdout


def test_the_sdk_waits_its_connect_timeout_for_a_broker_that_is_starting(tmp_path: Path) -> None:
    # a broker that starts after the client (compose, a restart) refuses connections for a
    # while: the client names what librdkafka saw only once its connect timeout is spent,
    # and reaches a broker that came up before then
    import threading

    from baton.streams.net import free_port
    from baton.streams.sdk.reach import BrokerWatch

    port = free_port()
    watch = BrokerWatch(f"127.0.0.1:{port}")
    producer = Producer(
        {"bootstrap.servers": f"127.0.0.1:{port}", "error_cb": watch.on_error, "logger": _LOG}
    )
    found: list[object] = []
    reader = threading.Thread(target=lambda: found.append(watch.list_topics(producer, 30)))
    reader.start()
    time.sleep(1.5)
    assert reader.is_alive() and "Connection refused" in (watch.last or "")
    with EmbeddedBroker(port=port, log_dir=tmp_path):
        reader.join(30)
        assert not reader.is_alive() and found, watch.last
