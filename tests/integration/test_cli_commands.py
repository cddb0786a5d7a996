"""The CLI as a user first meets it: `baton worker` from a fresh directory, and the commands that
talk to Kafka pointed at a dead port (one clear line, no librdkafka log lines, exit 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from baton.processors.probe import wait_until_deciding
from baton.schemas.errors import BrokerUnavailable
from baton.streams.embedded import EmbeddedBroker
from baton.streams.net import free_port
from baton.streams.topics import TopicCatalog, ensure_topics

pytestmark = pytest.mark.integration


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return {**env, **extra}


def test_worker_from_a_fresh_directory_creates_its_data_dir_and_decides(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    prefix = f"fresh{uuid.uuid4().hex[:6]}."
    catalog = TopicCatalog(prefix=prefix, partitions=2)
    kafka = {"bootstrap.servers": broker.bootstrap, "log_level": "0"}
    ensure_topics(kafka, catalog)  # the worker creates them too; the probe must not wait
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "worker"],
            cwd=tmp_path,  # nothing here: no .baton/ yet
            env=_env(
                BATON_BOOTSTRAP=broker.bootstrap,
                BATON_TOPIC_PREFIX=prefix,
                BATON_APP_ID=f"baton-{prefix}",
                BATON_PARTITIONS="2",
                BATON_SESSION_TIMEOUT_S="6",
                BATON_WEB_PORT=str(free_port()),
            ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_until_deciding(
                kafka,
                catalog.requests,
                catalog.decisions,
                2,
                timeout_s=60,
            )
        except BrokerUnavailable:
            pytest.fail(f"the worker did not decide; its log:\n{log_path.read_text()[-3000:]}")
        assert (tmp_path / ".baton" / "worker").is_dir()
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.mark.parametrize(
    "command",
    [
        ["kill", "--run", "x", "--reason", "y"],
        ["worker"],
        ["demo"],
    ],
    ids=["kill", "worker", "demo"],
)
def test_a_dead_broker_port_is_one_clear_line_at_once(command: list[str], tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "baton.cli", *command, "--bootstrap", address],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert result.returncode == BrokerUnavailable.exit_code == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"baton: error: cannot reach Kafka at {address} ({address}: connection refused); "
        "is the broker running?"
    ]
    assert "%3|" not in result.stderr and "rdkafka" not in result.stderr
    assert took < 5, f"{took:.1f} s"
