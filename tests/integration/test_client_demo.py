"""`baton demo` end to end: against the stack it starts itself, and against a Baton that cannot
decide (its exit status must say so, naming what differed)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from baton.streams.embedded import EmbeddedBroker
from tests.stack import fresh_topics

pytestmark = pytest.mark.integration


def _demo(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return subprocess.run(
        [sys.executable, "-m", "baton.cli", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.timeout(240)
def test_demo_starts_baton_plays_every_scenario_and_stops_it(tmp_path: Path) -> None:
    result = _demo(
        "--data-dir", str(tmp_path / "stack"), "--runs", "100", "--burst", "1000", timeout=230
    )
    out = result.stdout
    assert result.returncode == 0, f"{out[-4000:]}\n{result.stderr[-4000:]}"
    assert "All scenarios decided as the seed policy says" in out
    assert out.count("✔ decided as expected") == 6
    # the transcript, the alerter's lines and the audit are all there
    assert re.search(r"STOP\S*\s+\S*ownership_conflict\s+owner=billing_agent", out)
    assert "alert: 🛑 Multi-Agent run demo_" in out and "stopped: handoff_budget_exceeded" in out
    assert "approval_granted" in out and "by=finance_lead" in out
    assert "800 × allow ok" in out and "200 × stop handoff_budget_exceeded" in out
    assert re.search(r"the sink has all 1,0\d\d decisions of this demo", out)
    # without --keep no command for the stack that is gone: how to keep it instead
    assert "baton sql --dsn" not in out and "stricter.yaml" not in out
    assert "Next:" not in out and "run `baton demo --keep`" in out
    # the stack it started is gone: nothing listens on its bootstrap port any more
    bootstrap = re.search(r"bootstrap=(\S+):(\d+)", out)
    assert bootstrap is not None
    with socket.socket() as sock, pytest.raises(OSError):
        sock.settimeout(1)
        sock.connect((bootstrap[1], int(bootstrap[2])))


@pytest.mark.timeout(120)
def test_demo_exits_1_naming_what_differed_when_nothing_decides(broker: EmbeddedBroker) -> None:
    catalog = fresh_topics(broker.bootstrap, f"nodemo{uuid.uuid4().hex[:6]}.", 4)
    result = _demo(
        "--bootstrap",
        broker.bootstrap,
        "--topic-prefix",
        catalog.prefix,
        "--timeout",
        "0.5",
        "--burst",
        "20",
        "--runs",
        "2",
        timeout=100,
    )
    assert result.returncode == 1, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    err = result.stderr
    assert "difference(s) from the seed policy" in err
    assert re.search(
        r"ownership conflict: run_742:h1: outcome=stop \(expected allow\), "
        r"reason=governance_unavailable \(expected ok\)",
        err,
    ), err
    assert "kill switch: the kill_switch for run" in err and "no worker answered it" in err
    assert "skipped: give --sql URL" in result.stdout
