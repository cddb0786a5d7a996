"""Session 15 attacks on `baton replay`'s session 14 changes (H5): ``BATON_REPLAY_TIMELINE``
naming a path that cannot be appended to (a directory, a missing folder, a full device)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.processors import replay_pool
from tests.builds import COMPILED

pytestmark = pytest.mark.unit


def replay_with_timeline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, timeline: str) -> Any:
    """`baton replay` of an audit that is not there, with ``BATON_REPLAY_TIMELINE`` =
    ``timeline`` (the timeline is checked before the audit is opened): its exit code, output
    and exception (None, or what escaped the command).

    The compiled replay_pool reads the setting it took at import from a C static, where a
    monkeypatch of ``_TIMELINE`` does nothing: that build runs `baton` in a process started
    with the setting (the build's folder stays first on the inherited PYTHONPATH)."""
    policy = tmp_path / "p.yaml"
    policy.write_text("multi_agent:\n  max_handoffs: 2\n")
    args = ["replay", "--policy", str(policy), "--dsn", f"chdb://{tmp_path}/no-audit"]
    if COMPILED:
        return timeline_process(["from baton.cli.main import main; main()", *args], timeline)
    monkeypatch.setattr(replay_pool, "_TIMELINE", timeline)
    _register()
    return CliRunner().invoke(cli, args)


def timeline_process(args: list[str], timeline: str) -> SimpleNamespace:
    """``python -c *args`` with ``BATON_REPLAY_TIMELINE`` = ``timeline``: its exit code, its
    output (stdout and stderr, as CliRunner mixes them) and, when a traceback ended it, the
    exception's last line as an ``exception`` of the type it names (OSError or Exception)."""
    env = {**os.environ, "BATON_REPLAY_TIMELINE": timeline}
    done = subprocess.run(
        [sys.executable, "-c", *args], env=env, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    exception: BaseException | None = None
    if "Traceback (most recent call last)" in done.stderr:
        last = done.stderr.strip().splitlines()[-1]
        named = last.split(":", 1)[0].rsplit(".", 1)[-1]
        oserror = named in {"OSError", *(c.__name__ for c in OSError.__subclasses__())}
        exception = (OSError if oserror else Exception)(last)
    return SimpleNamespace(exit_code=done.returncode, output=output, exception=exception)


@pytest.mark.parametrize("where", ["a directory", "a missing folder"])
def test_a_timeline_that_cannot_be_written_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    timeline = tmp_path if where == "a directory" else tmp_path / "no" / "timeline.txt"
    result = replay_with_timeline(monkeypatch, tmp_path, str(timeline))
    assert result.exit_code == 2, (result.exit_code, repr(result.exception))
    assert "BATON_REPLAY_TIMELINE" in result.output and str(timeline) in result.output
