"""`baton kill` says it is still waiting for a worker, every few seconds (session 29, H3)."""

from __future__ import annotations

import time

import pytest

from baton.cli import waiting

pytestmark = pytest.mark.unit


def test_a_slow_call_gets_progress_lines_and_its_result(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(waiting, "PROGRESS_EVERY_S", 0.05)

    def slow() -> str:
        time.sleep(0.18)
        return "applied"

    assert waiting.with_progress(slow, "a worker to apply it", 30.0) == "applied"
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 4, lines
    assert lines[0].startswith("baton: still waiting for a worker to apply it: 0 s of 30")


def test_a_quick_call_says_nothing_and_an_error_is_raised_as_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert waiting.with_progress(lambda: 1, "x", 1.0) == 1

    def fails() -> None:
        raise TimeoutError("no worker answered")

    with pytest.raises(TimeoutError, match="no worker answered"):
        waiting.with_progress(fails, "x", 1.0)
    assert capsys.readouterr().err == ""


def test_ctrl_c_while_waiting_ends_the_process_at_once() -> None:
    """Session 30 (H3): the call ran in a pool's thread, which interpreter exit joins: Ctrl-C
    against a hung worker left `baton kill` alive until its whole --timeout had passed."""
    import signal
    import subprocess
    import sys

    script = (
        "import time\n"
        "from baton.cli.waiting import with_progress\n"
        "print('waiting', flush=True)\n"
        "with_progress(lambda: time.sleep(60), 'a worker to apply it', 60.0)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "waiting\n"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    try:
        proc.wait(timeout=20)
    finally:
        proc.kill()
    assert time.monotonic() - started < 5, "the process outlived Ctrl-C"
    assert proc.returncode != 0
