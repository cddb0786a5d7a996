"""`baton up` as a user runs it: one command, raw JSON from any client, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from baton.streams.net import free_port
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


class _Up:
    def __init__(self, data_dir: Path) -> None:
        self.sql_port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "baton.cli",
                "up",
                "--data-dir",
                str(data_dir),
                "--sql-port",
                str(self.sql_port),
                "--partitions",
                "4",
                "--session-timeout-s",
                "6",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def ready_line(self) -> str:
        return wait_for(
            lambda: next((ln for ln in self.lines if " ready " in ln), None),
            120,
            message=lambda: "ready line:\n" + "\n".join(self.lines[-30:]),
        )


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):
    u = _Up(tmp_path_factory.mktemp("up"))
    try:
        yield u
    finally:
        if u.proc.poll() is None:
            u.proc.send_signal(signal.SIGTERM)
            try:
                u.proc.wait(40)
            except subprocess.TimeoutExpired:
                u.proc.kill()


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_typed_json_from_a_default_partitioner_client_is_decided(up: _Up) -> None:
    line = up.ready_line()
    bootstrap = line.split("bootstrap=")[1].split()[0]
    run = f"run_{uuid.uuid4().hex[:6]}"
    # what a user types into kcat: plain JSON lines, default (CRC32) partitioner
    typed = [
        {
            "type": "handoff_requested",
            "request_id": "r1",
            "run_id": run,
            "task_id": "refund_check",
            "from_agent": "planner",
            "to_agent": "billing_agent",
            "event_time": "2026-11-25T10:00:00Z",
        },
        {
            "type": "handoff_requested",
            "request_id": "r2",
            "run_id": run,
            "task_id": "refund_check",
            "from_agent": "planner",
            "to_agent": "researcher",
            "event_time": "2026-11-25T10:00:01Z",
        },
    ]
    producer = Producer({"bootstrap.servers": bootstrap})
    for event in typed:
        producer.produce("gov.handoff.requests", json.dumps(event).encode(), run.encode())
    assert producer.flush(10) == 0

    def read(topic: str) -> list[dict]:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "log_level": 0})
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out, deadline = [], time.monotonic() + 3
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                out.append(json.loads(msg.value()))
        c.close()
        return [d for d in out if d.get("run_id") == run]

    decisions = wait_for(
        lambda: len(read("gov.decisions")) >= 2 and read("gov.decisions"), 60, message="decisions"
    )
    assert [(d["outcome"], d["reason"]) for d in decisions] == [
        ("allow", "ok"),
        ("stop", "ownership_conflict"),
    ]
    stops = wait_for(lambda: read("gov.stops"), 30, message="stop")
    assert stops[0]["reason"] == "ownership_conflict" and stops[0]["owner"] == "billing_agent"

    # the audit answers SQL through the running stack (chDB is held by the sink)
    sql = [
        sys.executable,
        "-m",
        "baton.cli",
        "sql",
        "--dsn",
        f"http://127.0.0.1:{up.sql_port}",
        f"SELECT reason, count() FROM governance.decisions FINAL WHERE run_id = '{run}' "
        "GROUP BY reason ORDER BY reason",
        "--format",
        "csv",
    ]

    def audited() -> str | None:
        out = subprocess.run(sql, capture_output=True, text=True, timeout=30)
        return out.stdout if "ownership_conflict" in out.stdout else None

    text = wait_for(audited, 60, interval=1, message="the audit to hold the run")
    assert "ok" in text and "ownership_conflict" in text


def test_sigterm_stops_everything_without_orphans(up: _Up) -> None:
    up.ready_line()
    children = _children_of(up.proc.pid)
    assert len(children) >= 2  # broker + worker (+ sink + alerts)
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(40) == 0
    wait_for(
        lambda: (
            not any(
                os.path.exists(f"/proc/{p}")
                and "zombie" not in Path(f"/proc/{p}/status").read_text().lower()
                for p in children
            )
        ),
        20,
        message="children to exit",
    )
