"""`baton up` stops in order: a terminal's Ctrl-C reaches `baton up` alone (its children run in
process groups of their own), which stops the worker, then the sink, which reads the decisions
to their end first, then the broker. Every child got the signal at once before, and a stop at
3,000 decisions/s left 294-425 decisions clients had received out of the audit, forgotten with
the embedded broker: a restart restored their runs with less spend and fewer handoffs
(session 35)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from tests.helpers import wait_for

pytestmark = pytest.mark.integration

_FLAGS = ("--sql-port", "off", "--partitions", "4", "--session-timeout-s", "6")
_RATE = 3_000  # requests a second, for ~6 s, then a burst and Ctrl-C while they keep coming
_BURST = 5_000


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}


@pytest.mark.timeout(240)
def test_a_ctrl_c_under_load_leaves_no_decision_a_client_got_out_of_the_audit(
    tmp_path: Path,
) -> None:
    lines = _stop_under_load(tmp_path / "stack", None)
    sink_log = (tmp_path / "stack" / "logs" / "sink.log").read_text()
    assert "reading the decisions to their end first" in sink_log
    assert "baton up: stopping" in "\n".join(lines)
    assert not any("not in the audit" in ln or "could not tell" in ln for ln in lines), lines


@pytest.mark.timeout(240)
def test_a_sink_that_crashed_just_before_the_stop_is_started_again_to_store_them(
    tmp_path: Path,
) -> None:
    """H2, session 35: the sink killed and waiting out its restart backoff when Ctrl-C came:
    3,535 and 7,235 decisions clients had received were not in the audit, and nothing said so."""

    def kill_the_sink(data_dir: Path) -> None:
        record = json.loads((data_dir / "stack.json").read_text())
        os.kill(record["pids"]["sink"], signal.SIGKILL)
        time.sleep(0.3)

    lines = _stop_under_load(tmp_path / "stack", kill_the_sink)
    said = "\n".join(lines)
    assert "the audit sink was down: started again to store the decisions" in said, said[-3000:]


def _stop_under_load(data_dir: Path, before_stop: Callable[[Path], None] | None) -> list[str]:
    """`baton up` in a process group of its own, ~3,000 requests a second, a burst, then
    ``before_stop`` and Ctrl-C; asserts every decision a reader got is in the audit after."""
    up = subprocess.Popen(
        [sys.executable, "-m", "baton.cli", "up", "--data-dir", str(data_dir), *_FLAGS],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    lines: list[str] = []
    threading.Thread(
        target=lambda: lines.extend(ln.rstrip() for ln in up.stdout), daemon=True
    ).start()  # type: ignore[union-attr]
    try:
        ready = wait_for(
            lambda: next((ln for ln in lines if " ready " in ln), None),
            120,
            message=lambda: "\n".join(lines[-20:]),
        )
        bootstrap = ready.split("bootstrap=")[1].split()[0]
        tag = uuid.uuid4().hex[:8]
        got: set[str] = set()
        reading = threading.Event()

        def read() -> None:  # what the clients received, until the broker is gone
            consumer = Consumer(
                {"bootstrap.servers": bootstrap, "group.id": f"r{tag}", "log_level": 0}
            )
            consumer.assign(
                [TopicPartition("gov.decisions", p, OFFSET_BEGINNING) for p in range(4)]
            )
            while not reading.is_set():
                for msg in consumer.consume(1000, 0.1):
                    if msg.error() is None and msg.value():
                        request = json.loads(msg.value()).get("request_id", "")
                        if request.startswith(tag):
                            got.add(request)
            consumer.close()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, "log_level": 0})
        started, sent, stopped_at = time.monotonic(), 0, None
        while time.monotonic() - started < 9:
            burst = 0
            if stopped_at is None and time.monotonic() - started >= 6:
                burst = _BURST  # the worker busy deciding them when the stop comes
            while sent < int((time.monotonic() - started) * _RATE) + burst:
                run = f"r{tag}_{sent % 500}"
                event = {
                    "type": "handoff_requested",
                    "request_id": f"{tag}-{sent}",
                    "run_id": run,
                    "task_id": f"t{sent}",
                    "from_agent": "planner",
                    "to_agent": "researcher",
                    "event_time": "2026-12-04T10:00:00Z",
                }
                try:
                    producer.produce(
                        "gov.handoff.requests", json.dumps(event).encode(), run.encode()
                    )
                except BufferError:
                    break
                sent += 1
            producer.poll(0)
            if burst:
                producer.flush(10)
                if before_stop is not None:
                    before_stop(data_dir)
                os.killpg(up.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
                stopped_at = time.monotonic()
            time.sleep(0.005)
        assert up.wait(90) == 0, "\n".join(lines[-30:])
        reading.set()
        reader.join(10)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    assert len(got) > 1_000, len(got)
    query = f"SELECT request_id FROM governance.decisions FINAL WHERE request_id LIKE '{tag}-%'"
    out = subprocess.run(
        [sys.executable, "-m", "baton.cli", "sql", "--data-dir", str(data_dir), "-f", "csv", query],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    audited = set(out.stdout.split()[1:])
    missing = got - audited
    assert not missing, f"{len(missing)} of {len(got)} decisions read are not in the audit"
    return lines


def test_the_decisions_the_sink_group_has_not_committed_are_counted(
    broker: Any, topic_prefix: str
) -> None:
    """What `baton up` says before its broker goes when the audit did not get everything:
    records past the sink group's committed offsets, each partition's end as a read finds it
    (Tansu's ListOffsets answers a record batch's start + 1)."""
    from baton.cli.up_stop import unaudited
    from baton.schemas.settings import Settings
    from tests.audit_support import create_topic, produce_records

    settings = Settings(bootstrap=broker.bootstrap, topic_prefix=topic_prefix, app_id="stopcount")
    topic = f"{topic_prefix}gov.decisions"
    create_topic(broker.bootstrap, topic, partitions=2)
    assert unaudited(settings) == 0
    landed = produce_records(broker.bootstrap, topic, [(b"k1", b"x")] * 7 + [(b"k2", b"y")] * 5)
    assert unaudited(settings) == 12  # a sink that never committed
    first = landed[0][0]
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": "stopcount-audit", "log_level": 0}
    )
    try:
        consumer.commit(offsets=[TopicPartition(topic, first, 4)], asynchronous=False)
    finally:
        consumer.close()
    assert unaudited(settings) == 12 - 4
