"""`baton down` (H2, session 33: operators typed it and got "No such command"). The stop of a
real stack: tests/integration/test_up_stack_record.py."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from baton.cli.stack_file import StackRecord, write_record

pytestmark = pytest.mark.unit


def _down(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return subprocess.run(
        [sys.executable, "-m", "baton.cli", "down", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _record(data_dir: Path, pid: int, state: str) -> None:
    write_record(
        StackRecord(
            state=state,  # type: ignore[arg-type]
            pid=pid,
            started_at=datetime(2026, 12, 1, tzinfo=UTC),
            stopped_at=datetime(2026, 12, 2, tzinfo=UTC) if state == "stopped" else None,
            data_dir=data_dir,
            app_id="baton",
            bootstrap="127.0.0.1:9",
            partitions=2,
        )
    )


def test_no_stack_is_exit_2_naming_where_it_looked(tmp_path: Path) -> None:
    out = _down(tmp_path)
    assert out.returncode == 2 and f"{tmp_path / 'stack.json'}" in out.stderr, out.stderr


def test_a_stopped_stack_is_nothing_to_stop(tmp_path: Path) -> None:
    _record(tmp_path, 12345, "stopped")
    out = _down(tmp_path)
    assert (
        out.returncode == 0 and "stopped at 2026-12-02 00:00:00 UTC; nothing to stop" in out.stdout
    )


def test_a_stale_record_never_signals_the_pid_it_names(tmp_path: Path) -> None:
    # a live process that is not a `baton up` holding the lock: a pid reused after a crash
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _record(tmp_path, bystander.pid, "running")
        out = _down(tmp_path)
        assert out.returncode == 0 and "is not running" in out.stdout, out.stdout + out.stderr
        assert bystander.poll() is None  # not signalled
    finally:
        bystander.kill()
        bystander.wait()


_HOLDER = (
    "import sys, time; from pathlib import Path; from baton.cli.stack_file import _take_lock; "
    "assert _take_lock(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
)


def _holder(data_dir: Path) -> subprocess.Popen[str]:
    """A process holding ``data_dir``'s lock as `baton up` does, its argv naming `baton up`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(data_dir), "baton", "up"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_the_lock_holder_is_stopped_never_a_pid_the_record_names_instead(tmp_path: Path) -> None:
    """H1, session 34: a record naming a decoy `baton up` had the decoy signalled, "ended",
    exit 0, and the stack holding the lock ran on."""
    holder = _holder(tmp_path)
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "baton", "up"])
    try:
        _record(tmp_path, decoy.pid, "running")
        out = _down(tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"stopping baton up pid {holder.pid}" in out.stdout
        assert holder.wait(10) == -15 and decoy.poll() is None
    finally:
        for proc in (holder, decoy):
            proc.kill()
            proc.wait()


def test_a_stack_still_starting_unrecorded_is_stopped(tmp_path: Path) -> None:
    """H1, session 34: `baton down` during a start (the record not written yet) said "nothing
    to stop", exit 0, and the stack came up."""
    _record(tmp_path, 12345, "stopped")  # the earlier start's record
    holder = _holder(tmp_path)
    try:
        out = _down(tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"baton up pid {holder.pid} (starting: not recorded in" in out.stdout
        assert holder.wait(10) == -15
    finally:
        holder.kill()
        holder.wait()
