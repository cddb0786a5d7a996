"""`baton replay` is a CI gate (0 nothing changes, 1 something does, 7 no answer): a bug's
exception must not end it with Python's exit 1, which a gate reads as "decisions change"."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from baton.cli import replay_cmds
from baton.cli.main import cli

SEED = Path(__file__).resolve().parents[2] / "policy.example.yaml"
#: the settings of an audit no stack's chain.key lies beside
_AUDIT = SimpleNamespace(clickhouse_dsn="http://127.0.0.1:1")


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyError("x"), TypeError("t")])
def test_an_unexpected_error_while_replaying_is_no_answer(monkeypatch, error):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(replay_cmds, "audit_settings", lambda *a, **k: _AUDIT)
    monkeypatch.setattr(replay_cmds, "_replay", broken)
    result = CliRunner().invoke(cli, ["replay", "--policy", str(SEED)])
    assert result.exit_code == 7, (result.exit_code, result.output)
    assert f"unexpected error ({type(error).__name__})" in result.output
    assert "a bug: report it" in result.output


def test_a_named_error_still_says_itself(monkeypatch):
    from baton.schemas.errors import ReplayFailed

    def failed(*args, **kwargs):
        raise ReplayFailed("the audit's run r1 is broken")

    monkeypatch.setattr(replay_cmds, "audit_settings", lambda *a, **k: _AUDIT)
    monkeypatch.setattr(replay_cmds, "_replay", failed)
    result = CliRunner().invoke(cli, ["replay", "--policy", str(SEED)])
    assert result.exit_code == 7
    assert "the audit's run r1 is broken" in result.output
    assert "unexpected" not in result.output
