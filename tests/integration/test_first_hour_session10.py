"""A new user's first hour with real stacks: `baton demo --keep` twice in one folder, the
commands it prints, a second demo against the kept stack, and Ctrl-C in the middle of a demo."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BATON = [sys.executable, "-m", "baton.cli"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return {**env, "NO_COLOR": "1"}


def _baton(
    *args: str, timeout: float = 200, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BATON, *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _closed(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        try:
            sock.connect((host, int(port)))
        except OSError:
            return True
    return False


@pytest.mark.timeout(420)
def test_demo_keep_twice_and_a_demo_against_the_kept_stack(tmp_path: Path) -> None:
    # the user's folder: `baton demo --keep` keeps its stack in ./.baton
    data = tmp_path / ".baton"
    first = _baton("demo", "--keep", "--burst", "0", cwd=tmp_path)
    record = json.loads((data / "stack.json").read_text())
    try:
        assert first.returncode == 0, f"{first.stdout[-3000:]}\n{first.stderr[-3000:]}"
        # the commands it suggests run as printed: issue 14's "which runs would have been
        # stopped" is one command away
        assert (
            "Next: baton trace run_742; baton replay --policy .baton/stricter.yaml --since 1h"
            in first.stdout
        )
        replay = _baton("replay", "--policy", ".baton/stricter.yaml", "--since", "1h", cwd=tmp_path)
        assert replay.returncode == 1, replay.stdout + replay.stderr  # 1: something changes
        assert "allow → stop:handoff_budget_exceeded" in replay.stdout
        assert re.search(r"demo_\w+_budget\s+step 5 ", replay.stdout), replay.stdout

        # a plain `baton demo` here plays on a stack of its own: it says so, and how to play
        # against the folder's (it said nothing: the user's stack never saw the demo)
        sql = re.search(r"Baton is up in .* sql=(\S+)", first.stdout)
        assert sql is not None, first.stdout
        command = f"baton demo --bootstrap {record['bootstrap']} --sql {sql[1]}"
        own = _baton("demo", "--burst", "0", cwd=tmp_path)
        assert own.returncode == 0, f"{own.stdout[-3000:]}\n{own.stderr[-3000:]}"
        assert "The `baton up` of this folder (baton up pid" in own.stdout
        assert f"To play against yours: {command}" in own.stdout

        # a second `baton demo --keep` in the same folder: one line saying how to use the
        # running stack; nothing started, the running stack's logs left as they were
        up_out = (data / "up.out").read_text()
        second = _baton("demo", "--keep", "--burst", "0", timeout=60, cwd=tmp_path)
        assert second.returncode == 2, second.stdout + second.stderr
        # the command it suggests is whole: the SQL endpoint's DSN with its token
        assert f"`{command}`" in second.stderr
        assert f"kill {record['pid']}" in second.stderr
        assert "The stack keeps running" not in second.stdout
        assert (data / "up.out").read_text() == up_out

        # ... which, played against that stack, passes: the seed run's requests are answered
        # from the record of the first demo (their time is the first demo's), which the
        # audit's count of this demo's window left out: 60 s of waiting, then exit 1
        # (in the stack's folder, as that line says: its audit chains are keyed with the
        # stack's worker/chain.key, found there)
        again = _baton(
            "demo", "--bootstrap", record["bootstrap"], "--sql", sql[1], "--burst", "0",
            cwd=tmp_path,
        )  # fmt: skip
        assert again.returncode == 0, f"{again.stdout[-3000:]}\n{again.stderr[-3000:]}"
        assert "the sink has all" in again.stdout

    finally:
        os.kill(record["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 60
        while not _closed(record["bootstrap"]) and time.monotonic() < deadline:
            time.sleep(0.5)


@pytest.mark.timeout(240)
def test_ctrl_c_in_the_middle_of_the_demo_stops_it_its_stack_and_exits_130(
    tmp_path: Path,
) -> None:
    out_path = tmp_path / "demo.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [*BATON, "demo", "--data-dir", str(tmp_path / "stack")],
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: Ctrl-C reaches the group
        )
    try:
        deadline = time.monotonic() + 180
        while "── 2. " not in out_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, out_path.read_text()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        started = time.monotonic()
        proc.wait(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out_path.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert text.rstrip().endswith("baton: interrupted (Ctrl-C)"), text[-3000:]
    assert "Traceback" not in text and "difference(s) from the seed policy" not in text
    assert took < 40, f"Ctrl-C took {took:.0f} s"
    bootstrap = re.search(r"bootstrap=(\S+)", text)
    assert bootstrap is not None
    assert _closed(bootstrap[1]), "the demo's stack outlives its Ctrl-C"
