"""Session 24's first hour, walked as a newcomer: the exit status of a mistake says what the
README's list says it means (a query ClickHouse refuses is bad input, not an audit out of
reach), and what `baton up` refuses it refuses before it leaves anything on disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from baton.cli.main import _register, cli
from baton.schemas.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def baton() -> CliRunner:
    _register()
    return CliRunner()


# ------------------------------------------------- baton sql: a refused query is exit 2
class _Audit:
    """A ClickHouse client whose every query raises ``error`` (what clickhouse-connect
    raises for the server's answer, or for no answer)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def query(self, sql: str) -> Any:
        raise self.error

    command = raw_query = query


@pytest.fixture
def audit_raising(monkeypatch: pytest.MonkeyPatch) -> Any:
    import baton.cli.query_cmds as query_cmds

    def use(error: Exception) -> None:
        @contextmanager
        def client(settings: Settings) -> Iterator[_Audit]:
            yield _Audit(error)

        settings = Settings(clickhouse_dsn="http://baton:secret@127.0.0.1:8123")
        monkeypatch.setattr(query_cmds, "query_settings", lambda dsn, data_dir: settings)
        monkeypatch.setattr(query_cmds, "audit_client", client)

    return use


def _answer(code: int, text: str) -> DatabaseError:
    """clickhouse-connect's error for an HTTP answer carrying X-ClickHouse-Exception-Code."""
    return DatabaseError(
        f"Received ClickHouse exception, code: {code}, server response: Code: {code}. "
        f"DB::Exception: {text}",
        code=code,
    )


def test_a_query_with_a_syntax_error_is_bad_input_not_an_unreachable_audit(
    baton: CliRunner, audit_raising: Any
) -> None:
    # it was exit 5, "the audit unreachable": a script retried a typo forever
    audit_raising(_answer(62, "Syntax error: failed at position 1 ('SELEC'). (SYNTAX_ERROR)"))
    result = baton.invoke(cli, ["sql", "SELEC 1"])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "baton: error: ClickHouse at http://baton:***@127.0.0.1:8123 refused the query: "
        "Code: 62. DB::Exception: Syntax error: failed at position 1 ('SELEC'). (SYNTAX_ERROR)\n"
    )


def test_a_refused_statement_of_a_script_is_named_with_its_line(
    baton: CliRunner, audit_raising: Any
) -> None:
    audit_raising(_answer(60, "Unknown table expression identifier 'nowhere'. (UNKNOWN_TABLE)"))
    result = baton.invoke(cli, ["sql", "-"], input="-- name: broken\nSELECT x FROM nowhere;\n")
    assert result.exit_code == 2, result.output
    assert "refused the query" in result.stderr  # one statement: no "1 of 1"
    result = baton.invoke(cli, ["sql", "-"], input="SELECT 1;\n-- name: broken\nSELECT x;\n")
    assert result.exit_code == 2, result.output
    assert "refused statement 1 of 2 (SELECT 1, line 1): Code: 60." in result.stderr


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("HTTPConnectionPool(host='127.0.0.1', port=8123): connection refused"),
        _answer(241, "Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)"),
        _answer(202, "Too many simultaneous queries. (TOO_MANY_SIMULTANEOUS_QUERIES)"),
        DatabaseError("HTTP driver received HTTP status 502"),  # no code: not ClickHouse's
    ],
    ids=["unreachable", "out-of-memory", "busy", "no-code"],
)
def test_an_audit_that_is_away_or_busy_is_still_exit_5(
    baton: CliRunner, audit_raising: Any, error: Exception
) -> None:
    audit_raising(error)
    result = baton.invoke(cli, ["sql", "SELECT 1"])
    assert result.exit_code == 5, result.output
    assert result.stderr.startswith("baton: error: ClickHouse at http://baton:***@127.0.0.1:8123 ")


# ------------------------------------------------- baton up: refused before anything is made
def test_up_with_a_mistyped_policy_leaves_no_data_dir_behind(
    baton: CliRunner, tmp_path: Path
) -> None:
    # it made DATA_DIR and DATA_DIR/stack.lock, then named the policy's bad key
    policy = tmp_path / "typo.yaml"
    policy.write_text("multi_agent:\n  max_handofs: 8\n")
    data_dir = tmp_path / "new-stack"
    result = baton.invoke(cli, ["up", "--data-dir", str(data_dir), "--policy", str(policy)])
    assert result.exit_code == 2, result.output
    assert "multi_agent.max_handofs: unknown key; did you mean max_handoffs?" in result.stderr
    assert not data_dir.exists()


def test_up_names_a_data_dir_it_cannot_create_not_its_lock_file(
    baton: CliRunner, tmp_path: Path
) -> None:
    # "cannot lock the data dir X (stack.lock): Not a directory": the lock was never reached
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    data_dir = blocker / "stack"
    result = baton.invoke(cli, ["up", "--data-dir", str(data_dir)])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"baton: error: cannot create the data dir {data_dir}: Not a directory; expected a "
        "directory (--data-dir, env BATON_DATA_DIR) that baton up may create and write\n"
    )


# ------------------------------------------------- baton --help: commands in a newcomer's order
def test_the_command_list_is_grouped_with_every_command_in_one_place(baton: CliRunner) -> None:
    # twenty commands listed alphabetically: alerts, approvals, approve, audit, demo, ...
    # put the two a newcomer starts with (demo, up) fifth and nineteenth
    from baton.cli.main import _MODULES, _SECTIONS

    placed = [name for _, names in _SECTIONS for name in names]
    assert sorted(placed) == sorted(_MODULES), "a command is in no section, or in two"
    listing = baton.invoke(cli, ["--help"]).output.split("Commands:", 1)[1]
    listing = listing.split("Exit codes:", 1)[0]  # the epilog after the list
    lines = [line.strip() for line in listing.splitlines() if line.strip()]
    assert lines[0] == "Start here:"
    assert "Other:" not in lines
    # a command's row is indented 4; its description's further lines (session 25: first
    # sentences whole, wrapped) are indented past the name column
    rows = [line for line in listing.splitlines() if line[:4] == "    " and line[4] != " "]
    shown = [line.split()[0] for line in rows]
    assert shown[:2] == ["demo", "up"]
    assert shown == placed


def test_the_sink_takes_dsn_like_every_other_audit_command(baton: CliRunner) -> None:
    # `baton sql --dsn`, `trace --dsn`, `doctor --dsn` ... but `baton sink --dsn` was
    # "No such option: --dsn"
    result = baton.invoke(cli, ["sink", "--dsn", "nonsense", "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    assert "clickhouse_dsn (BATON_CLICKHOUSE_DSN): expected http(s)://" in result.stderr
    assert "got 'nonsense'" in result.stderr


# ------------------------------------------------- baton send: the file before the broker
@pytest.mark.parametrize("where", [[], ["--bootstrap", "127.0.0.1:1"]], ids=["no-stack", "dead"])
def test_send_names_a_missing_file_before_looking_for_kafka(
    baton: CliRunner, tmp_path: Path, where: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # it said "no Baton stack to reach for Kafka" (or "cannot reach Kafka", exit 4, after the
    # connect timeout of a broker that does not answer); fixed, it said the file was missing
    for name in [n for n in os.environ if n.startswith("BATON_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    result = baton.invoke(cli, ["send", "events.jsonl", *where])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "baton: error: cannot read events.jsonl: No such file or directory; expected a file of "
        "JSON lines (or a pipe, or - for stdin)\n"
    )


# ------------------------------------------------- alert rules: a typo'd threshold is named
def test_a_mistyped_parameter_of_a_built_in_rule_is_named_not_ignored(tmp_path: Path) -> None:
    # `params: {max_stop_rat: 0.5}` loaded, and tenant_stop_rate fired at its default 0.2
    from baton.schemas.errors import ConfigError
    from baton.sinks.rules import load_rules

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: tenant_stop_rate\n    params: {max_stop_rat: 0.5}\n")
    with pytest.raises(ConfigError) as caught:
        load_rules(rules)
    assert str(caught.value) == (
        f"{rules}: rules[0] (tenant_stop_rate).params: unknown key 'max_stop_rat' (did you mean "
        "'max_stop_rate'?); tenant_stop_rate takes window_minutes, min_decisions, max_stop_rate"
    )
    rules.write_text("rules:\n  - name: tenant_stop_rate\n    params: {max_stop_rate: 0.5}\n")
    [tuned] = [r for r in load_rules(rules) if r.name == "tenant_stop_rate"]
    assert tuned.params["max_stop_rate"] == 0.5


# ------------------------------------------------- schema export: an unwritable place is named
def test_schema_export_into_a_place_it_cannot_write_is_one_line(
    baton: CliRunner, tmp_path: Path
) -> None:
    # a traceback ending in FileNotFoundError / NotADirectoryError, exit 1
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = baton.invoke(cli, ["schema", "export", str(blocker / "schemas")])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"baton: error: cannot write the JSON Schemas into {blocker / 'schemas'}: Not a "
        "directory; expected a directory you may create and write\n"
    )


def test_a_chdb_directory_the_sink_cannot_create_is_a_setting_error(tmp_path: Path) -> None:
    # `baton sink --dsn chdb:///proc/x` ended in a FileNotFoundError traceback, exit 1
    from baton.schemas.errors import ConfigError
    from baton.sinks.clickhouse import connect

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as caught:
        connect(f"chdb://{blocker}/chdb", create=True)
    assert str(caught.value) == (
        f"clickhouse_dsn (BATON_CLICKHOUSE_DSN): cannot create the chDB directory "
        f"{blocker}/chdb: Not a directory; expected a directory this process may create and write"
    )


def test_demo_with_a_data_dir_it_cannot_create_is_one_line(
    baton: CliRunner, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = baton.invoke(cli, ["demo", "--data-dir", str(blocker / "demo")])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"baton: error: cannot create the demo's data dir {blocker / 'demo'}: Not a directory; "
        "expected a directory (--data-dir) the demo may create and write\n"
    )


def test_alerts_check_refuses_a_webhook_url_that_cannot_work_before_any_rule_runs(
    baton: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--webhook-url notaurl` passed while no rule fired; when one did, the post failed and
    # was only logged: the page never went out
    import baton.cli.alerts_cmds as alerts_cmds

    settings = Settings(clickhouse_dsn="http://127.0.0.1:1")
    monkeypatch.setattr(alerts_cmds, "query_settings", lambda dsn, data_dir: settings)

    @contextmanager
    def no_audit(settings: Settings) -> Iterator[None]:
        raise AssertionError("the rules ran before the webhook URL was checked")
        yield

    monkeypatch.setattr(alerts_cmds, "audit_client", no_audit)
    result = baton.invoke(cli, ["alerts", "check", "--webhook-url", "notaurl"])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "baton: error: webhook URL <webhook URL without scheme or host>: expected http://… or "
        "https://… with a host "
        "(--webhook-url / BATON_WEBHOOK_URL)\n"
    )


# ------------------------------------------------- --help: no option explained by a unit alone
def test_no_option_is_explained_by_its_unit_alone(baton: CliRunner) -> None:
    # `baton alerts --help`: "--storm-window FLOAT RANGE  seconds"; `policy current`:
    # "--timeout  seconds": seconds of what, and what happens after them?
    import click

    def commands(group: click.Group, path: str) -> Iterator[tuple[str, click.Command]]:
        for name, command in sorted(group.commands.items()):
            yield f"{path} {name}", command
            if isinstance(command, click.Group):
                yield from commands(command, f"{path} {name}")

    terse = [
        f"{path} {param.opts[0]}: {param.help!r}"
        for path, command in commands(cli, "baton")
        for param in command.params
        if isinstance(param, click.Option)
        and param.help
        and param.help.split()[0] == "seconds"
        and not set(param.help.split()) - {"seconds", "to", "wait"}  # of what?
    ]
    assert terse == []


def test_send_typed_alone_at_a_terminal_says_it_reads_the_terminal(
    baton: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `baton send` with nothing after it sat waiting for stdin, silent, like a hung command
    import baton.cli.send_cmds as send_cmds

    monkeypatch.setattr(send_cmds, "_stdin_is_a_terminal", lambda: True)
    result = baton.invoke(cli, ["send", "--dry-run"], input="")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("baton send: reading events from the terminal, one JSON")
    assert "Ctrl-D sends them" in result.stderr
    monkeypatch.setattr(send_cmds, "_stdin_is_a_terminal", lambda: False)  # a pipe: quiet
    assert baton.invoke(cli, ["send", "--dry-run"], input="").stderr == ""


# ------------------------------------------------- baton up: Ctrl-C before it was ready
class _BrokerInterrupted:
    """An embedded broker whose start is interrupted by Ctrl-C (a user who gave up waiting)."""

    running = False
    returncode = None
    stopped = False
    signal = 2  # SIGINT; a test sets another

    def __init__(self, port: int | None, log_dir: Path, **_: object) -> None:
        pass

    def start(self) -> None:
        import signal

        signal.raise_signal(self.signal)

    def stop(self) -> None:
        type(self).stopped = True


@pytest.mark.parametrize(("signum", "said"), [(2, "Ctrl-C"), (15, "SIGTERM")])
def test_ctrl_c_before_up_was_ready_is_exit_130_not_a_clean_stop(
    baton: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int, said: str
) -> None:
    # it ended 0, as a stack stopped after it ran does: a script could not tell it never was
    # up; a SIGTERM (a service manager's stop) read "interrupted (Ctrl-C)" (session 35, H2)
    import signal

    import baton.streams.embedded as embedded

    monkeypatch.setattr(embedded, "EmbeddedBroker", _BrokerInterrupted)
    monkeypatch.setattr(_BrokerInterrupted, "signal", signum)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = baton.invoke(
            cli, ["up", "--data-dir", str(tmp_path / "stack"), "--no-audit", "--sql-port", "off"]
        )
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert result.exit_code == 130, result.output
    assert "baton up: interrupted during start-up; stopping" in result.stderr
    assert result.stderr.endswith(f"baton: interrupted ({said})\n")
    assert _BrokerInterrupted.stopped
