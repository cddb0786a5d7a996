"""Session 15 (H5): `baton replay`'s exit code when its own stdout or stderr is closed
(``baton replay ... >&-`` / ``2>&-``: Python sets ``sys.stdout`` / ``sys.stderr`` to None).

Replay's exit code is its answer (0 nothing changes, 1 something does, 7 it cannot say): a
closed stream must not turn a "nothing changes" into a 1 with a traceback nobody sees. On
da187d4 a closed stderr did (``_Progress`` called ``sys.stderr.isatty()``); H1's branch
replay15 (c01c01b, ``_leave``) did it for a closed stdout too (``sys.stdout.flush()``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.replay_bench import record as bench_record
    from tests.chdb_audit import chdb_audit
    from tests.unit.test_engine_support import policy_with

    root = tmp_path_factory.mktemp("s15exit")
    policy = policy_with(max_handoffs=20)
    chdb_audit(root / "chdb", bench_record(6, 40, policy)).close()
    (root / "same.yaml").write_text("multi_agent:\n  max_handoffs: 20\n")
    return root


def _replay(audit: Path, closed: str) -> tuple[int, str]:
    """Exit code and stderr (or stdout) of a replay of one unchanged run, ``closed``: the
    stream closed ("stdout", "stderr"), stdout a full device ("full") or "none"; the other
    one captured."""
    from bench.replay_bench import KEY

    env = {**os.environ, "PYTHONPATH": str(ROOT), "BATON_AUDIT_CHAIN_KEY": KEY.decode()}
    argv = [sys.executable, "-m", "baton.cli.main", "replay", "--policy", str(audit / "same.yaml")]
    argv += ["--dsn", f"chdb://{audit / 'chdb'}", "--run", "run-00001", "--format", "json"]
    redirect = {"stdout": " >&-", "stderr": " 2>&-", "full": " >/dev/full"}.get(closed, "")
    shell = " ".join(f"'{a}'" for a in argv) + redirect
    out = subprocess.run(
        ["/bin/sh", "-c", shell],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    return out.returncode, (out.stdout + out.stderr).decode(errors="replace")[-2000:]


def test_an_unchanged_run_is_exit_0(small_audit: Path) -> None:
    code, said = _replay(small_audit, "none")
    assert code == 0 and '"changed_runs": 0' in said, said


def test_a_closed_stdout_keeps_the_exit_code(small_audit: Path) -> None:
    code, said = _replay(small_audit, "stdout")
    assert code == 0 and "Traceback" not in said, said


def test_a_closed_stderr_keeps_the_exit_code_and_the_report(small_audit: Path) -> None:
    code, said = _replay(small_audit, "stderr")
    assert code == 0 and '"changed_runs": 0' in said, said


def test_a_report_that_cannot_be_written_is_not_an_answer(small_audit: Path) -> None:
    code, said = _replay(small_audit, "full")
    assert code not in (0, 1) and "Traceback" not in said, (code, said)
