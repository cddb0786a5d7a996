"""A `baton up` stopped under load, for the tests of its ordered stop (session 35)."""

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

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from tests.helpers import wait_for

_FLAGS = ("--sql-port", "off", "--partitions", "4", "--session-timeout-s", "6")
_RATE = 3_000  # requests a second, for ~3 s, then a burst and Ctrl-C while they keep coming
_BURST = 5_000


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}


def _runs(pid: int) -> bool:
    from baton.streams.broker_guard import runs

    return runs(pid)


def stop_under_load(
    data_dir: Path,
    before_stop: Callable[[Path], None] | None,
    kill: bool = False,
    env: dict[str, str] | None = None,
) -> list[str]:
    """`baton up` in a process group of its own, ~3,000 requests a second, a burst, then
    ``before_stop`` and Ctrl-C (``kill``: SIGKILL to `baton up` alone, its children left to
    stop on their parent-death signals); asserts every decision a reader got is in the audit
    after."""
    up = subprocess.Popen(
        [sys.executable, "-m", "baton.cli", "up", "--data-dir", str(data_dir), *_FLAGS],
        env={**_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    lines: list[str] = []
    output = threading.Thread(
        target=lambda: lines.extend(ln.rstrip() for ln in up.stdout), daemon=True
    )  # type: ignore[union-attr]
    output.start()
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
        while time.monotonic() - started < 5:
            burst = 0
            if stopped_at is None and time.monotonic() - started >= 3:
                burst = _BURST * (4 if kill else 1)  # the worker busy deciding them at the stop
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
                if kill:
                    pids = json.loads((data_dir / "stack.json").read_text())["pids"]
                    up.kill()
                else:
                    os.killpg(up.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
                stopped_at = time.monotonic()
            time.sleep(0.005)
        if kill:
            assert up.wait(10) == -signal.SIGKILL
            wait_for(lambda: not any(_runs(pid) for pid in pids.values()), 90, message=str(pids))
        else:
            assert up.wait(90) == 0, "\n".join(lines[-30:])
        reading.set()
        reader.join(10)
        # every line `baton up` wrote before it exited: the copying thread was not waited for,
        # and on a loaded host the stop's last lines were not in ``lines`` yet (a flake)
        output.join(10)
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
