"""A SIGTERM to `baton up` while it spawns its children: raised out of a spawn after the fork,
it left a sink no record named, which outlived the stack (~40 s) or took the next start's chDB
(session 39: 7 of ~32 signals in that window). From before the first spawn, signals only set
`stopping`: the children start, are recorded, and are stopped in order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from baton.streams.broker_guard import runs

pytestmark = pytest.mark.integration

_SCRIPT = """
import json, os, signal, sys, time
import baton.cli.up as up

real = up.start_children

def start(supervisor, children, logs):
    os.kill(os.getpid(), signal.SIGTERM)  # while the children are being spawned
    time.sleep(0.2)  # its handler runs here, before the first spawn
    real(supervisor, children, logs)
    pids = {name: proc.pid for name, proc in supervisor.processes().items()}
    print("SPAWNED " + json.dumps(pids), flush=True)

up.start_children = start
from baton.cli.main import cli
cli(["up", "--data-dir", sys.argv[1], "--partitions", "2", "--no-audit"],
    auto_envvar_prefix="BATON")
"""


def test_a_signal_while_the_children_spawn_stops_every_child_it_started(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 130, out  # stopped before ready
    spawned = [line for line in done.stdout.splitlines() if line.startswith("SPAWNED ")]
    assert spawned, out  # the signal no longer aborts the spawns half-way
    pids = json.loads(spawned[0].removeprefix("SPAWNED "))
    assert "worker" in pids, pids
    assert not [name for name, pid in pids.items() if runs(pid)], out  # each stopped
    record = json.loads((tmp_path / "data" / "stack.json").read_text())
    assert record["state"] == "stopped"
