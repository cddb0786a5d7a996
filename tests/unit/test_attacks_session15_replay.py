"""Session 15 attacks on `baton replay`'s session 14 changes (H5): ``BATON_REPLAY_TIMELINE``
naming a path that cannot be appended to (a directory, a missing folder, a full device)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from baton.cli.main import _register, cli
from baton.processors import replay_pool

pytestmark = pytest.mark.unit


def replay_with_timeline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, timeline: str) -> Result:
    """`baton replay` of an audit that is not there, with ``BATON_REPLAY_TIMELINE`` =
    ``timeline`` (the timeline is checked before the audit is opened)."""
    monkeypatch.setattr(replay_pool, "_TIMELINE", timeline)
    policy = tmp_path / "p.yaml"
    policy.write_text("multi_agent:\n  max_handoffs: 2\n")
    _register()
    return CliRunner().invoke(
        cli, ["replay", "--policy", str(policy), "--dsn", f"chdb://{tmp_path}/no-audit"]
    )


@pytest.mark.parametrize("where", ["a directory", "a missing folder"])
def test_a_timeline_that_cannot_be_written_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    timeline = tmp_path if where == "a directory" else tmp_path / "no" / "timeline.txt"
    result = replay_with_timeline(monkeypatch, tmp_path, str(timeline))
    assert result.exit_code == 2, (result.exit_code, repr(result.exception))
    assert "BATON_REPLAY_TIMELINE" in result.output and str(timeline) in result.output
