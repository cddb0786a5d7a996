"""`baton kill` prints what a worker's answer holds: its worker name and, for a refusal, its
detail. Anyone who writes gov.decisions can answer under a worker's name (the unsigned
decisions class): the name and detail went to the operator's terminal raw (ESC sequences, a
line rewritten), as H5's F5 and H7's fa1fbd2 were for other commands; now escaped."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from baton.cli.main import cli as main_cli
from baton.schemas.decision import Outcome, Phase, Reason

ESC = "\x1b[2J\x1b[1;1H"


class _Operator:
    """An OperatorClient whose switch is answered by ``answer``."""

    answer: Any = None

    def __init__(self, **_: Any) -> None:
        pass

    def kill(self, **_: Any) -> Any:
        return self.answer

    release = kill

    def close(self) -> None:
        pass


@pytest.mark.parametrize("reason", [Reason.KILL_SWITCH, Reason.CONTROL_UNSIGNED])
def test_a_forged_answer_to_baton_kill_is_shown_escaped(
    reason: Reason, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _Operator.answer = SimpleNamespace(
        phase=Phase.CONTROL,
        outcome=Outcome.STOP,
        reason=reason,
        approver=None,
        decided_at=None,
        worker=f"w-1{ESC}applied by ops",
        detail=f"refused{ESC}",
    )
    monkeypatch.setattr("baton.streams.net.check_reachable", lambda *a, **k: None)
    monkeypatch.setattr("baton.streams.sdk.OperatorClient", _Operator)
    result = CliRunner().invoke(
        main_cli,
        ["kill", "--run", "r1"],
        env={"BATON_BOOTSTRAP": "127.0.0.1:1", "BATON_CLICKHOUSE_DSN": f"chdb://{tmp_path}/c"},
        color=True,  # click strips escape sequences from what is not a terminal; a terminal's
    )
    assert "\x1b" not in result.output, result.output
    assert "w-1" in result.output
