"""`baton replay`'s options attacked: every bad value is one line naming it, before any
connection is made (no stack needed), and never a traceback; and against an empty audit."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli

pytestmark = pytest.mark.unit


@pytest.fixture
def baton() -> CliRunner:
    _register()
    return CliRunner()


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "stricter.yaml"
    path.write_text("multi_agent:\n  max_handoffs: 2\n")
    return path


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--since", "9999999d"], "reaches before year 1"),
        (["--since", "99999999999999999999h"], "expected an ISO time"),
        (["--since", "yesterday"], "expected an ISO time"),
        (["--since", "1h", "--from", "2h"], "--since and --from are the same bound"),
        (["--from", "2026-11-29T10:00:00Z", "--to", "2026-11-29T09:00:00Z"], "is not after"),
        (["--jobs", "0"], "0 is not in the range 1<=x<=64"),
    ],
)
def test_a_bad_range_or_option_is_one_line(
    baton: CliRunner, policy: Path, options: list[str], says: str
) -> None:
    result = baton.invoke(
        cli, ["replay", "--policy", str(policy), "--dsn", "chdb:///nowhere", *options]
    )
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output


def test_a_policy_that_is_not_one_is_refused_with_its_problem(
    baton: CliRunner, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("multi_agent:\n  max_handoffs: eight\n")
    result = baton.invoke(cli, ["replay", "--policy", str(bad), "--dsn", "chdb:///nowhere"])
    assert result.exit_code == 2 and "max_handoffs" in result.output, result.output


def test_an_audit_that_is_not_there_is_exit_5_not_nothing_changes(
    baton: CliRunner, policy: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-audit"
    result = baton.invoke(cli, ["replay", "--policy", str(policy), "--dsn", f"chdb://{missing}"])
    assert result.exit_code == 5, result.output
    assert str(missing) in result.output and "Traceback" not in result.output


def test_a_long_replay_draws_a_progress_bar_and_a_short_one_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from baton.cli import replay_cmds

    clock = iter([100.0, 100.5, 106.0, 107.0, 112.0])
    monkeypatch.setattr(replay_cmds.time, "monotonic", lambda: next(clock))
    bar = replay_cmds._Progress(total=30_000)  # stderr is not a terminal: a line every 5 s
    bar(runs=10, decisions=100)  # 0.5 s in: nothing yet
    bar(runs=500, decisions=15_000)  # 6 s in
    bar(runs=600, decisions=16_000)  # 1 s after the last line: nothing
    bar(runs=4_000, decisions=30_000)  # done: the summary says the rest
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "baton replay: [" + "█" * 15 + "░" * 15 + "] 15,000/~30,000 decisions, 500 runs (2,500/s)"
    ]


def test_replay_tenant_is_compared_in_the_folded_form_the_audit_records() -> None:
    from baton.cli.replay_cmds import _scope

    assert _scope(None, None, None, "ACME").tenant == "acme"
    assert _scope(None, None, None, "ＡＣＭＥ").tenant == "acme"
    assert _scope(None, None, None, None).tenant is None
