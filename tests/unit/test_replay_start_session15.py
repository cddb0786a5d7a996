"""`baton replay`'s serial start and end cost less (session 15): the name rules' big
patterns are compiled when a name needs them, not at every start, and the command that is
the whole process ends as soon as its answer is written (no interpreter teardown)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

_ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    # (the PYTHONPATH given kept first: a compiled build's site, test_compiled_core.py)
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(_ROOT)) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


_STARTED = """
import baton.cli.main, baton.cli.replay_cmds, baton.schemas.names as names
import baton.schemas.name_scripts as s
lazy = (s._scripts, s._one_script_pattern, s._shown_pattern, s._first_script_pattern)
print([f.cache_info().currsize for f in lazy])
print(names.normal_name("Coder"), names.normal_name("Кодер"))
print(s.shown_in_one_script("кодер"), s.one_script("кодеr"), s.script_of("д"))
print([f.cache_info().currsize for f in lazy])
"""


def test_the_script_patterns_are_compiled_when_a_name_needs_them_not_at_start() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _STARTED], cwd=_ROOT, env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "[0, 0, 0, 0]"  # nothing compiled by importing the CLI and the rules
    assert lines[1:3] == ["coder кодер", "True False Cyrl"]
    assert lines[3] == "[1, 1, 1, 1]"


_WORKER = """
import baton.schemas.name_scripts as s
from baton.processors.app import GovernanceWorker
from baton.schemas.policy import DEFAULT_POLICY_YAML, parse_policy
from baton.schemas.settings import Settings
lazy = (s._scripts, s._one_script_pattern, s._shown_pattern, s._first_script_pattern)
print([f.cache_info().currsize for f in lazy])
GovernanceWorker(Settings(bootstrap="127.0.0.1:1"), parse_policy(DEFAULT_POLICY_YAML, "seed"))
print([f.cache_info().currsize for f in lazy])
"""


def test_a_worker_compiles_the_script_patterns_at_its_start_not_on_its_loop() -> None:
    # (the first non-ASCII name would otherwise hold its batch ~0.1 s on the event loop)
    out = subprocess.run(
        [sys.executable, "-c", _WORKER], cwd=_ROOT, env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["[0, 0, 0, 0]", "[1, 1, 1, 1]"]


def _audit(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    from bench.replay_bench import KEY as BENCH_KEY
    from bench.replay_bench import record as bench_record
    from tests.chdb_audit import chdb_audit

    chdb_audit(tmp_path / "chdb", bench_record(60, 400, policy_with(max_handoffs=20))).close()
    (tmp_path / "stricter.yaml").write_text("multi_agent:\n  max_handoffs: 3\n")
    argv = ["replay", "--policy", str(tmp_path / "stricter.yaml"), "--jobs", "1"]
    argv += ["--dsn", f"chdb://{tmp_path / 'chdb'}", "--format", "json"]
    return argv, _env(BATON_AUDIT_CHAIN_KEY=BENCH_KEY.decode())


# an atexit handler says whether the interpreter's teardown ran
_RUN = (
    "import atexit, sys; atexit.register(lambda: print('teardown ran', file=sys.stderr));"
    "from baton.cli.main import main; main()"
)


def test_the_command_ends_when_its_answer_is_written_with_its_exit_code(
    tmp_path: Path,
) -> None:
    argv, env = _audit(tmp_path)
    out = subprocess.run([sys.executable, "-c", _RUN, *argv], env=env, capture_output=True)
    assert out.returncode == 1, out.stderr[-2000:]  # (the stricter policy changes runs)
    assert b"teardown ran" not in out.stderr
    whole = orjson.loads(out.stdout)  # every byte written before the process ended
    assert whole["faithful"] and whole["changed_runs"] and not whole["partial"]
    # stdout a file: the same bytes
    with (tmp_path / "out.json").open("wb") as sink:
        code = subprocess.run(
            [sys.executable, "-c", _RUN, *argv], env=env, stdout=sink, stderr=subprocess.PIPE
        ).returncode
    assert code == 1
    again = orjson.loads((tmp_path / "out.json").read_bytes())
    assert {**again, "seconds": 0} == {**whole, "seconds": 0}
    # a table: the same early end, the whole table written
    table = argv[:-2]
    out = subprocess.run([sys.executable, "-c", _RUN, *table], env=env, capture_output=True)
    assert out.returncode == 1, out.stderr[-2000:]
    assert b"as recorded: all" in out.stdout and b"under the new policy:" in out.stdout
    assert out.stdout.endswith(b"\n") and b"teardown ran" not in out.stderr


def test_a_command_run_in_a_caller_s_process_exits_as_before(tmp_path: Path) -> None:
    from baton.cli.main import _register, cli

    argv, env = _audit(tmp_path)
    _register()
    result = CliRunner().invoke(cli, argv, env=env)
    assert result.exit_code == 1, result.output[-2000:]
    assert isinstance(result.exception, SystemExit)  # not the test process ended
    assert orjson.loads(result.stdout_bytes)["faithful"]


_IMPORTED = """
import gc, sys
import baton.cli.main
passes = []
gc.callbacks.append(lambda phase, info: phase == "start" and passes.append(info["generation"]))
import baton.cli.replay_cmds
during = len(passes)  # (allocates no container: no pass starts here)
print(during, gc.isenabled(), "baton.schemas.policy" in sys.modules)
"""


def test_the_command_s_imports_run_without_collector_passes_and_leave_it_on() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTED], cwd=_ROOT, env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    during, enabled, imported = out.stdout.split()
    # (the body after the imports, the collector on again, may start a young pass or two;
    # with it on throughout, ~80 passes of every generation ran)
    assert int(during) <= 2 and enabled == imported == "True"
