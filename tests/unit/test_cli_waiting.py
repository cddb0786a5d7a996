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
