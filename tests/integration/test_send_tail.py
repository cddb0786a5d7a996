"""`baton send` and `baton tail` against a real worker on Tansu: the README tour with nothing
but Baton (events in as JSON lines, decisions, stops and dead letters out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from baton.streams.embedded import EmbeddedBroker
from baton.streams.net import free_port
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog
from tests.helpers import wait_for
from tests.stack import EventSender, WorkerProcess, fresh_topics, wait_deciding

pytestmark = pytest.mark.integration

PARTITIONS = 4


def tour(run: str) -> str:
    """The README's two handoffs of one task to two agents, as JSON lines."""
    return (
        f'{{"type":"handoff_requested","request_id":"{run}-r1","run_id":"{run}",'
        '"task_id":"refund_check","from_agent":"planner","to_agent":"billing_agent",'
        '"event_time":"2026-11-25T10:00:00Z"}\n'
        f'{{"type":"handoff_requested","request_id":"{run}-r2","run_id":"{run}",'
        '"task_id":"refund_check","from_agent":"planner","to_agent":"researcher",'
        '"event_time":"2026-11-25T10:00:01Z"}\n'
    )


@dataclass
class Stack:
    env: dict[str, str]
    catalog: TopicCatalog
    bootstrap: str

    def baton(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        return subprocess.run(
            [sys.executable, "-m", "baton.cli", *args],
            env={**clean, **self.env, **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"s{uuid.uuid4().hex[:8]}."
    workdir = tmp_path_factory.mktemp("send")
    catalog = fresh_topics(broker.bootstrap, prefix, PARTITIONS)
    worker = WorkerProcess(broker.bootstrap, prefix, workdir, partitions=PARTITIONS)
    try:
        wait_deciding(broker.bootstrap, catalog)
        env = {"BATON_BOOTSTRAP": broker.bootstrap, "BATON_TOPIC_PREFIX": prefix}
        yield Stack(env, catalog, broker.bootstrap)
    finally:
        worker.stop()


def test_the_tour_sends_two_handoffs_and_tails_the_ownership_stop(
    stack: Stack, tmp_path: Path
) -> None:
    run = f"run_{uuid.uuid4().hex[:6]}"
    events = tmp_path / "events.jsonl"
    events.write_text("# the README tour\n" + tour(run))
    sent = stack.baton("send", str(events))
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == f"2 event(s) sent: 2 to {stack.catalog.requests}"

    def decided() -> list[str]:
        out = stack.baton("tail", "decisions", "--from-beginning", "--run", run).stdout
        return out.splitlines() if len(out.splitlines()) >= 2 else []

    first, second = wait_for(decided, 30, interval=0.5, message="two decisions of the tour")
    assert f"{run} pre_handoff allow ok planner -> billing_agent" in first
    assert f"{run} pre_handoff stop ownership_conflict planner -> researcher" in second
    assert "owner=billing_agent" in second and "fallback=single_agent" in second
    stops = stack.baton("tail", "stops", "--from-beginning", "--run", run, "--format", "json")
    (stop,) = [json.loads(line) for line in stops.stdout.splitlines()]
    assert stop["reason"] == "ownership_conflict" and stop["run_id"] == run
    # a run with nothing to show says so on stderr (H1, session 27: silence, exit 0)
    none = stack.baton("tail", "stops", "-n", "1", "--run", "no-such-run")
    assert none.returncode == 0 and none.stdout == ""
    assert none.stderr.startswith(
        f"baton tail: no records of run 'no-such-run' among the newest 1 records of "
        f"{stack.catalog.stops}; --from-beginning reads them all"
    ), none.stderr


def test_bad_lines_are_named_by_number_and_the_good_ones_sent(stack: Stack) -> None:
    run = f"run_{uuid.uuid4().hex[:6]}"
    good, _ = tour(run).splitlines()
    lines = [
        good,
        "",
        "{not json",
        '{"type":"kill_switch","scope":"global"}',
        good.replace('"task_id":"refund_check",', ""),
        "x" * 70_000,
    ]
    sent = stack.baton("send", stdin="\n".join(lines) + "\n")
    assert sent.returncode == 1
    errors = sent.stderr.splitlines()
    assert errors[0].startswith("baton send: line 3: not_json")
    assert errors[1].startswith("baton send: line 4: control_event: kill_switch is a control")
    assert errors[2].startswith("baton send: line 5: schema") and "task_id" in errors[2]
    assert errors[3].startswith("baton send: line 6: oversized: 70000 bytes")
    assert "4 bad line(s) not sent" in errors[-1]
    assert sent.stdout.strip() == f"1 event(s) sent: 1 to {stack.catalog.requests}"


def test_events_are_keyed_by_run_id_on_its_murmur2_partition(stack: Stack) -> None:
    """An approval goes to gov.approvals on the partition of its run, as Faust expects."""
    run = f"run_{uuid.uuid4().hex[:6]}"
    approval = {
        "type": "approval_granted",
        "run_id": run,
        "approval_id": f"apr_{run}",
        "approver": "finance_lead",
        "event_time": "2026-11-25T10:00:02Z",
    }
    sent = stack.baton("send", "-", stdin=json.dumps(approval) + "\n")
    assert sent.returncode == 0, sent.stderr
    partition = partition_for(run.encode(), PARTITIONS)
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "t", "log_level": 0})
    try:
        consumer.assign([TopicPartition(stack.catalog.approvals, partition, 0)])

        def landed() -> bool:
            msg = consumer.poll(0.5)
            return msg is not None and msg.error() is None and msg.key() == run.encode()

        wait_for(landed, 15, message=f"the approval on partition {partition}")
    finally:
        consumer.close()


def test_tail_follow_prints_a_stop_as_it_happens(stack: Stack) -> None:
    run = f"run_{uuid.uuid4().hex[:6]}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    follow = subprocess.Popen(
        [sys.executable, "-m", "baton.cli", "tail", "stops", "-f", "-n", "0", "--run", run],
        env={**clean, **stack.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # it starts at the end: events sent before it got there would not be shown
        said = follow.stderr.readline() if follow.stderr else ""
        assert said.startswith(f"baton tail: following {stack.catalog.stops}"), said
        assert stack.baton("send", stdin=tour(run)).returncode == 0
        line = follow.stdout.readline() if follow.stdout else ""
        assert f"{run} pre_handoff stop ownership_conflict" in line, line
    finally:
        follow.terminate()
        follow.wait(10)


def test_tail_shows_a_dead_letter_with_its_error_and_original(stack: Stack) -> None:
    """...with what a hostile sender put in it escaped: a key or a payload with terminal
    control sequences cannot clear or repaint the reader's screen."""
    key = f"run_{uuid.uuid4().hex[:6]}\x1b[2J"
    payload = b"{oops \x1b]0;pwned\x07"
    EventSender(stack.bootstrap, stack.catalog.requests).send_raw(payload, key.encode())

    def dead() -> str:
        out = stack.baton("tail", "deadletter", "--from-beginning", "--run", key).stdout
        return out.strip()

    line = wait_for(dead, 30, interval=0.5, message="the dead letter")
    assert f" not_json {stack.catalog.requests}[" in line
    assert f"key={key[:-4]}\\x1b[2J" in line and "\x1b" not in line and "\x07" not in line
    assert line.split(" | original: ")[1].startswith("{oops \\x1b]0;pwned\\x07")


def test_a_dead_broker_is_one_line_and_exit_4(stack: Stack) -> None:
    dead = {"BATON_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    for args in (("send",), ("tail", "decisions")):
        result = stack.baton(*args, stdin=tour("run_x"), env=dead)
        assert result.returncode == 4, result
        assert result.stderr.count("\n") == 1 and "cannot reach Kafka" in result.stderr
