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
