"""A new user's first hour, command by command: what the CLI answers to the mistakes a
newcomer makes (Ctrl-C, a zero timeout, a dead SQL endpoint) is one line and an exit status
that means what the docs say, never a traceback or a verdict the command did not reach."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from baton.cli.main import INTERRUPTED_EXIT, _BatonGroup, _register, cli
from baton.streams.net import free_port

pytestmark = pytest.mark.unit

BATON = [sys.executable, "-m", "baton.cli"]


@pytest.fixture
def baton() -> CliRunner:
    _register()
    return CliRunner()


def _commands(group: click.Group, path: str = "baton") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path} {name}")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return {**env, "NO_COLOR": "1"}


def test_ctrl_c_is_exit_130_and_one_line_not_click_s_aborted_exit_1() -> None:
    # `baton alerts check`, `baton replay` and `baton audit verify` exit 1 to say "an alert
    # fires", "the policy changes decisions", "a row was tampered with": Ctrl-C gave click's
    # "Aborted!" and the same 1, which a script reads as that verdict
    @click.command("slow")
    def slow() -> None:
        raise KeyboardInterrupt

    group = _BatonGroup(commands={"slow": slow})
    result = CliRunner().invoke(group, ["slow"])
    assert result.exit_code == INTERRUPTED_EXIT == 130
    assert "Aborted" not in result.output
    assert result.stderr.strip() == "baton: interrupted (Ctrl-C)"


def test_ctrl_c_while_a_command_waits_for_the_audit_exits_130() -> None:
    # a real process and a real SIGINT to its process group, as a terminal sends it: `baton
    # sql` waiting on an SQL endpoint that accepted the connection and never answers
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # never accepted: the client's connect succeeds, its query hangs
        dsn = f"http://baton:token@127.0.0.1:{server.getsockname()[1]}"
        proc = subprocess.Popen(
            [*BATON, "sql", "--dsn", dsn, "SELECT 1"],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            time.sleep(3)  # past the imports, into the query's wait
            assert proc.poll() is None, proc.communicate()
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    assert proc.returncode == INTERRUPTED_EXIT, (out, err)
    assert "Traceback" not in err and "Aborted" not in err
    assert err.strip().splitlines()[-1] == "baton: interrupted (Ctrl-C)"


def test_a_dead_sql_endpoint_is_one_error_line_without_the_http_library_s_warnings() -> None:
    # urllib3 and clickhouse-connect logged "Retrying (...)" and "Unexpected Http Driver
    # Exception" as WARNING lines with timestamps ahead of Baton's own error line
    dsn = f"http://baton:token@127.0.0.1:{free_port()}"
    done = subprocess.run(
        [*BATON, "sql", "--dsn", dsn, "SELECT 1"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 5, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("baton: error: cannot reach ClickHouse at http://baton:***@127.0.0.1:")
    # with -v the library's lines are back, for whoever debugs the connection
    verbose = subprocess.run(
        [*BATON, "-v", "sql", "--dsn", dsn, "SELECT 1"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "WARNING urllib3" in verbose.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["kill", "--run", "r", "--timeout", "0"],
        ["kill", "--run", "r", "--timeout", "-1"],
        ["policy", "current", "--timeout", "0"],
    ],
    ids=["kill-0", "kill-negative", "policy-current-0"],
)
def test_a_zero_or_negative_wait_is_a_usage_error_not_a_traceback(
    baton: CliRunner, args: list[str]
) -> None:
    # `baton kill --run r --timeout 0` reached the SDK's ValueError("timeout: must be > 0
    # seconds"): a traceback, after the broker had been looked for
    result = baton.invoke(cli, args, env={"BATON_BOOTSTRAP": f"127.0.0.1:{free_port()}"})
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--timeout'" in result.stderr
    assert not isinstance(result.exception, ValueError)


def test_no_option_s_help_shows_a_range_bounded_by_none(baton: CliRunner) -> None:
    # FiniteFloatRange() with no bounds showed "[default: 30.0; x<=None]" in kill --help
    for path, command in _commands(cli):
        for param in command.params:
            if isinstance(param.type, click.FloatRange | click.IntRange):
                assert param.type.min is not None or param.type.max is not None, (
                    f"{path} {param.opts[0]}: a range without bounds"
                )
        result = baton.invoke(cli, [*path.split()[1:], "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "None]" not in result.output, f"{path} --help shows a bound of None"


def test_every_option_says_what_it_does_and_the_command_list_reads_whole(
    baton: CliRunner,
) -> None:
    # `baton approvals --help` showed "--limit INTEGER RANGE [default: 1000; 1<=x<=100000]"
    # and nothing else; `baton --help` listed sql as "Run QUERY ('-' reads it from stdin)
    # against the audit, e.g." (click cuts the short help after the first sentence's ".")
    for path, command in _commands(cli):
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"{path} {param.opts[0]}: no help text"
    listing = baton.invoke(cli, ["--help"]).output.split("Commands:", 1)[1]
    assert not [line for line in listing.splitlines() if line.rstrip().endswith("e.g.")]


def test_each_command_loads_from_the_module_that_registers_it() -> None:
    # `baton` loads a command's module when the command is asked for: the table must name
    # every command, each with the module that registers it
    import importlib

    from baton.cli.main import _MODULES

    found: dict[str, str] = {}
    for module in set(_MODULES.values()):
        group = click.Group()
        importlib.import_module(f"baton.cli.{module}").register(group)
        found |= dict.fromkeys(group.commands, module)
    assert found == _MODULES


def test_a_command_imports_its_own_module_not_every_command_s() -> None:
    # every `baton ...` imported all fourteen command modules first (policy models,
    # clickhouse-connect, the SDK, the demo): 0.69 s of CPU for `baton tail --help`, 0.39 s now
    probe = (
        "import sys\n"
        "from baton.cli.main import main\n"
        "sys.argv = ['baton', 'tail', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('baton.cli.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.strip().splitlines()[-1]
    assert "'baton.cli.tail_cmds'" in loaded
    for other in ("demo_cmds", "policy_cmds", "replay_cmds", "audit_cmds", "people_cmds"):
        assert f"'baton.cli.{other}'" not in loaded, loaded


def _step(n: int, outcome: str, reason: str, **fields: object) -> dict[str, object]:
    from datetime import UTC, datetime
    from decimal import Decimal

    return {
        "decided_at": datetime(2026, 11, 30, 12, 0, n, tzinfo=UTC),
        "tenant": "default",
        "phase": "control" if outcome == "recorded" else "pre_handoff",
        "outcome": outcome,
        "reason": reason,
        "from_agent": "planner",
        "to_agent": "writer",
        "task_id": f"t{n}",
        "owner": None,
        "depth": 1,
        "handoff_count": n,
        "spent_usd": Decimal(0),
        "tool_calls": 0,
        "policy_version": "p1",
        "fallback": "single_agent" if outcome == "stop" else None,
        "approval_id": None,
        "approval_expires_at": None,
        "approver": None,
        "handoff_status": None,
        "action": None,
        "tool": None,
        "detail": None,
        **fields,
    }


def test_trace_of_a_run_that_went_on_after_its_stop_says_so() -> None:
    # the demo's killed run: allow, kill, STOP killed, release, allow. Its trace began
    # "STOPPED at step 3: killed", read as the run's end although step 5 was allowed
    from baton.sinks.trace import format_trace

    steps = [
        _step(1, "allow", "ok"),
        _step(2, "recorded", "kill_switch"),
        _step(3, "stop", "killed"),
        _step(4, "recorded", "kill_switch_released"),
        _step(5, "allow", "ok"),
    ]
    headline = format_trace("run_1", steps).splitlines()[1]
    assert headline == (
        "STOPPED at step 3: killed (planner -> writer, task=t3), fallback single_agent; "
        "went on: 1 allowed after it, the last at step 5"
    )
    # a run whose stop is its last handoff reads as before (the README's run_742)
    ended = format_trace("run_2", steps[:4]).splitlines()[1]
    assert ended == "STOPPED at step 3: killed (planner -> writer, task=t3), fallback single_agent"


def test_the_readme_s_exit_codes_are_the_error_tree_s() -> None:
    # a script's author reads the codes in one place: each class of BatonError has its code
    # there, and Ctrl-C's
    import re
    from pathlib import Path

    from baton.schemas import errors

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("Exit status, for scripts:")
    sentence = " ".join(readme[start : readme.index("\n\n", start)].split())
    said = {int(n) for n in re.findall(r"(?:[:;] )(\d+) ", sentence)}
    codes = {
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.BatonError)
        and isinstance(cls.__dict__.get("exit_code"), int)
    }
    assert codes <= said, f"README leaves out exit codes {sorted(codes - said)}"
    assert f"; {INTERRUPTED_EXIT} Ctrl-C" in sentence


def test_every_demo_title_ends_in_its_rule() -> None:
    # "── 2. Handoff budget: max_handoffs 8, the 9th is stopped (run demo_c788b1_budget) "
    # ran past the 78 columns with no rule after it, unlike the short titles
    from baton.cli.demo_play import Demo

    lines: list[str] = []
    echo = type("Echo", (), {"echo": staticmethod(lines.append)})()
    for title in (
        "1. short",
        "2. Handoff budget: max_handoffs 8, the 9th is stopped (run demo_c788b1_budget)",
    ):
        Demo._title(echo, title)  # type: ignore[arg-type]
    rules = [click.unstyle(line) for line in lines if line]
    assert len(rules[0]) == 78 and rules[0].startswith("── 1. short ───")
    assert rules[1].endswith(") ───")
