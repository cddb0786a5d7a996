"""`baton up`'s sink is told to drain the moment it starts: the signal waits for its handlers.

At a stop, `baton up` starts a sink that was down again and tells it to drain once the workers
have stopped. A worker stops in a fraction of a second (session 37), so the SIGTERM reached the
new sink while it was still importing chDB: Python's default action ended it, nothing was
drained, and 3,346-5,374 of ~10,000 decisions clients had received were not in the audit
(tests/integration/test_up_stop_sink_down.py, intermittently). `baton up` now starts its sink
with the signals it handles blocked (streams/broker_guard.hold_signals); the sink unblocks them
once its handlers are in place, and a pending SIGTERM starts the drain.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from baton.streams.embedded import EmbeddedBroker, orphaned_when_parent_dies
from tests.audit_support import create_topic, produce_decisions, scenario_decisions

pytestmark = pytest.mark.integration


def test_a_sink_told_to_drain_while_it_starts_drains_the_topic(
    broker: EmbeddedBroker, chdb_dir: Path, topic_prefix: str, tmp_path: Path
) -> None:
    create_topic(broker.bootstrap, f"{topic_prefix}gov.decisions", partitions=4)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    decisions = scenario_decisions(runs=40, start=start)
    produce_decisions(broker.bootstrap, f"{topic_prefix}gov.decisions", decisions)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env.update(
        BATON_BOOTSTRAP=broker.bootstrap,
        BATON_TOPIC_PREFIX=topic_prefix,
        BATON_PARTITIONS="4",
        BATON_APP_ID=f"baton-{topic_prefix.rstrip('.')}",
        BATON_CLICKHOUSE_DSN=f"chdb://{chdb_dir}",
        BATON_SESSION_TIMEOUT_S="6",
        BATON_SINK_BATCH_TIMEOUT_S="0.2",
    )
    log = tmp_path / "sink.log"
    with log.open("wb") as out:
        sink = subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "sink", "--drain-s", "30", "--sql-port", "off"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=orphaned_when_parent_dies,  # as baton up starts it (cli/up_children.py)
        )
        time.sleep(0.05)  # the interpreter is starting; the sink's handlers are seconds away
        sink.send_signal(signal.SIGTERM)
        try:
            code = sink.wait(60)
        finally:
            sink.kill()
    said = log.read_text()
    assert code == 0, f"exit {code} (-15: killed by the SIGTERM it was told to drain by)\n{said}"
    assert "stopping: reading the decisions to their end first" in said, said
    stored = re.search(r"audit sink stopped: (\d+) decisions", said)
    assert stored and int(stored[1]) == len(decisions), said


def test_signals_held_from_the_fork_reach_the_handler_installed_later() -> None:
    code = (
        "import signal, sys, time\n"
        "time.sleep(0.5)  # imports\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('handled', flush=True), sys.exit(3)))\n"
        "from baton.streams.broker_guard import release_signals\n"
        "release_signals()\n"
        "time.sleep(10)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=orphaned_when_parent_dies,
    )
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=30)
    assert (child.returncode, out.strip()) == (3, "handled")
