"""Session 15 (H5, F2b): a ``BATON_REPLAY_TIMELINE`` that opens for appending but cannot be
written (/dev/full; a full disk) failed replay with an OSError out of ``replay_pool.mark``:
a traceback and exit 1, replay's "something changes". H1's check at the command's start
(replay15 18fb45c) opens the file, which succeeds there, so it did not catch this case."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from baton.processors import replay_pool
from tests.builds import COMPILED
from tests.unit.test_attacks_session15_replay import replay_with_timeline, timeline_process

pytestmark = pytest.mark.unit


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_timeline_that_cannot_be_written_is_no_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result = replay_with_timeline(monkeypatch, tmp_path, "/dev/full")
    # refused up front naming the setting (2), or the timeline dropped and the missing
    # audit reported (5): never an OSError out of the command
    assert not isinstance(result.exception, OSError), repr(result.exception)
    assert result.exit_code in (2, 5), (result.exit_code, result.output)
    if result.exit_code == 2:
        assert "BATON_REPLAY_TIMELINE" in result.output


def test_a_fifo_as_the_timeline_is_refused_not_waited_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # (opening a FIFO for appending blocks until a reader comes: the replay hung for ever)
    fifo = tmp_path / "timeline"
    os.mkfifo(fifo)
    result = replay_with_timeline(monkeypatch, tmp_path, str(fifo))
    assert result.exit_code == 2, (result.exit_code, repr(result.exception))
    assert "BATON_REPLAY_TIMELINE" in result.output and "not a regular file" in result.output


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_timeline_line_that_cannot_be_written_mid_run_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a disk filling up after the start's check: the replay goes on without its timeline
    if COMPILED:  # its replay_pool reads the setting taken at import: a process of its own
        run = timeline_process([_MARK_THEN_CHECK], "/dev/full")
        assert run.output.startswith("marked\n"), run.output[-3000:]
        assert isinstance(run.exception, OSError), run.output[-3000:]
        return
    monkeypatch.setattr(replay_pool, "_TIMELINE", "/dev/full")
    replay_pool.mark("piece")
    with pytest.raises(OSError):
        replay_pool.check_timeline()


#: the interpreted test's steps, in a process whose BATON_REPLAY_TIMELINE is /dev/full
_MARK_THEN_CHECK = """
from baton.processors import replay_pool
replay_pool.mark("piece")
print("marked", flush=True)
replay_pool.check_timeline()
"""
