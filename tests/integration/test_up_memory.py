"""`baton up` against its embedded broker's memory: Tansu keeps every record in memory and
applies no retention, so a stack left running grew until the kernel killed something; now it
says so at 25 % and 50 % of --broker-memory-max and stops itself past it (exit 4), and
`baton doctor` names what the broker holds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.helpers import wait_for
from tests.integration.test_up import _children_of, _gone, _Up

pytestmark = pytest.mark.integration
_BATON = (sys.executable, "-m", "baton.cli")


def _ballast(bootstrap: str, records: int) -> None:
    """``records`` KB into a topic of their own: the broker holds them all."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for _ in range(records):
        while True:
            try:
                producer.produce("ballast", b"b" * 1000)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def test_a_broker_past_its_memory_limit_stops_the_stack_saying_so(tmp_path: Path) -> None:
    stack = _Up(tmp_path / "up", "--no-audit", "--broker-memory-max", "96M")
    try:
        ready = stack.ready_line()
        bootstrap = ready.split("bootstrap=")[1].split()[0]
        children = _children_of(stack.proc.pid)
        doctor = subprocess.run(
            [*_BATON, "doctor", "--data-dir", str(tmp_path / "up"), "--format", "json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        checks = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
        line = checks["embedded broker memory"]
        assert line["status"] == "ok", line
        assert "of --broker-memory-max 96 MB" in line["detail"]
        record = json.loads((tmp_path / "up" / "stack.json").read_text())
        assert record["broker_memory_max"] == 96 << 20

        _ballast(bootstrap, 60_000)  # ~60 MB: past half of the limit
        wait_for(
            lambda: any("50% of --broker-memory-max 96 MB" in ln for ln in stack.lines),
            30,
            message=lambda: "\n".join(stack.lines[-10:]),
        )
        assert stack.proc.poll() is None  # said, not stopped
        _ballast(bootstrap, 60_000)
        code = stack.proc.wait(60)
    finally:
        if stack.proc.poll() is None:
            stack.proc.send_signal(signal.SIGTERM)
            stack.proc.wait(40)
    text = "\n".join(stack.lines)
    assert code == 4, text
    assert "baton: error: the embedded Kafka broker holds" in text
    assert "past --broker-memory-max 96 MB" in text
    assert "Start it again" in text
    assert "restarted the worker" not in text
    wait_for(lambda: _gone(children), 30, message="the stack's children to exit")
    assert json.loads((tmp_path / "up" / "stack.json").read_text())["state"] == "stopped"


def test_a_limit_that_is_not_a_size_is_refused_before_anything_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [*_BATON, "up", "--data-dir", str(tmp_path / "up"), "--broker-memory-max", "lots"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Invalid value for '--broker-memory-max': not a size" in done.stderr
    assert not (tmp_path / "up" / "stack.json").exists()
