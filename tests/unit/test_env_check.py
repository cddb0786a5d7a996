"""Session 25: a ``BATON_*`` variable no part of Baton reads is warned about, once, with the
closest name Baton reads; no name Baton reads ever is; docs/deploy.md lists them all."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from baton.cli.env_check import (
    closest,
    command_variables,
    known_variables,
    model_variables,
    unknown_variables,
    warn_unknown,
    warning_text,
)
from baton.cli.main import _register, cli
from baton.schemas import env_names
from baton.schemas.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
#: where a `BATON_*` name a reader or a deployment sets can be written (tests/: below)
SOURCES = (
    "cli",
    "processors",
    "schemas",
    "sinks",
    "streams",
    "bench",
    "examples",
    "deploy",
    "docs",
    "build_backend",
    "README.md",
    "Dockerfile",
    "setup.py",
    "pyproject.toml",
    "docker-compose.yml",
    "docker-compose.sasl.yml",
)
#: a whole name: `BATON_SASL_*`, `BATON_<NAME>` and `KAFKA_BATON_PASSWORD` are none
_NAME = re.compile(r"\bBATON_[A-Z0-9_]*[A-Z0-9]\b(?![*<])")
#: what the test suite reads from its environment (tests/ sets many more, for the processes
#: it starts: those are Baton's own)
_TEST_READ = re.compile(r"""(?:environ\.get\(|environ\[|getenv\()\s*["'](BATON_[A-Z0-9_]+)""")
#: written on purpose as names Baton does not read: the warnings' examples (docs/deploy.md,
#: docs/client.md), and a setting that is gone (docs/performance.md's history)
NOT_SETTINGS = {"BATON_SQL_FORMAT", "BATON_BATCH_TIMEOUT_S", "BATON_CLIENT_TIMOUT_S"}


def _files(top: str) -> list[Path]:
    path = ROOT / top
    if path.is_file():
        return [path]
    return [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def _names_in(tops: tuple[str, ...], pattern: re.Pattern[str]) -> dict[str, str]:
    """Each name ``pattern`` finds in the files under ``tops``, with one file it is in."""
    found: dict[str, str] = {}
    for top in tops:
        for path in _files(top):
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # a binary file
            for name in pattern.findall(text):
                found.setdefault(name, str(path.relative_to(ROOT)))
    return found


@pytest.fixture(scope="module")
def known() -> set[str]:
    _register()
    # a name no source holds: every source is asked
    unknown, names = known_variables(cli, ["BATON_NO_SUCH_VARIABLE"])
    assert unknown == {"BATON_NO_SUCH_VARIABLE"}
    return names


# ------------------------------------------------- the known set
def test_every_baton_name_written_in_the_source_tree_is_one_baton_reads(known: set[str]) -> None:
    # a variable added to the code, the docs or a deployment file is never warned about
    found = _names_in(SOURCES, _NAME)
    assert len(found) > 50, "the grep finds the names"
    strays = {n: where for n, where in found.items() if n not in known and n not in NOT_SETTINGS}
    assert strays == {}, "a name is in no Settings field, click option or env_names"
    assert set(found) >= NOT_SETTINGS, "an example of a name Baton does not read is gone"
    assert not NOT_SETTINGS & known, "an example name is one Baton reads now"


def test_what_the_test_suite_reads_is_not_warned_about_when_it_runs_baton(
    known: set[str],
) -> None:
    # BATON_COMPILED_ALL=1 pytest ... : each `baton` process the suite starts inherits it
    read = _names_in(("tests",), _TEST_READ)
    assert {"BATON_COMPILED_ALL", "BATON_TEST_SLOW_RUN"} <= set(read)
    assert {n: where for n, where in read.items() if n not in known} == {}


def test_every_settings_field_and_client_field_is_known(known: set[str]) -> None:
    from baton.streams.sdk.options import ClientSettings

    fields = {f"BATON_{name.upper()}" for name in ClientSettings.model_fields}
    assert {"BATON_TOMBSTONE_RETENTION_S", "BATON_CLIENT_TIMEOUT_S"} <= fields
    assert fields <= known


def test_a_field_alias_is_the_variable_pydantic_settings_reads() -> None:
    from pydantic import AliasChoices, Field
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class Aliased(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="BATON_")
        plain: int = 0
        renamed: int = Field(0, validation_alias=AliasChoices("BATON_NEW", "baton_old"))

    assert model_variables(Aliased) == {"BATON_PLAIN", "BATON_NEW", "BATON_OLD"}


def test_click_reads_its_automatic_and_explicit_names_and_the_walk_finds_each(
    known: set[str],
) -> None:
    # the automatic rule, nested groups included, and --help (click reads BATON_UP_HELP too)
    assert {
        "BATON_VERBOSE",
        "BATON_UP_DATA_DIR",
        "BATON_UP_RESTART_LIMIT",
        "BATON_AUDIT_VERIFY_HELP",
        "BATON_TAIL_HELP",
    } <= known
    ctx = click.Context(cli, info_name="baton", auto_envvar_prefix="BATON")
    up = cli.get_command(ctx, "up")
    assert up is not None
    with click.Context(up, parent=ctx, info_name="up") as sub:
        assert sub.auto_envvar_prefix == "BATON_UP"  # the prefix the walk gives it
    assert "BATON_UP_SQL_PORT" in command_variables(up, "BATON_UP")


def test_every_options_own_variable_is_in_the_registry_checked_without_imports() -> None:
    # the cheap source: a `baton up` started with BATON_SQL_PORT imports no other command
    _register()
    explicit: set[str] = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            explicit.update([param.envvar] if isinstance(param.envvar, str) else param.envvar or ())
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(cli)
    fields = {f"BATON_{name.upper()}" for name in Settings.model_fields}
    assert explicit - fields == set(env_names.OPTION_VARIABLES)


def test_every_registered_name_is_read_somewhere() -> None:
    # the registry holds no name nothing reads any more
    text = "\n".join(
        p.read_text()
        for top in ("cli", "processors", "sinks", "streams", "tests", "setup.py", "build_backend")
        for p in _files(top)
        if p.suffix in (".py", ".txt") and p.name != "test_env_check.py"
    )
    constants = {getattr(env_names, n): n for n in env_names.__all__ if n.isupper()}
    for name in env_names.REGISTERED:
        constant = constants.get(name)
        used = f'"{name}"' in text or (constant is not None and constant in text)
        assert used, f"{name}: no code reads it"


# ------------------------------------------------- the warning
def test_a_misspelt_variable_is_named_with_the_one_meant() -> None:
    _register()
    environ = {
        "BATON_TOMBSTONE_RETENTON_S": "60",
        "BATON_BOOTSTRAP_SERVERS": "kafka:9092",
        "BATON_UPP_DATA_DIR": "/srv",
        "BATON_ZQXJ": "1",
        "BATON_BOOTSTRAP": "kafka:9092",
        "BATON_UP_DATA_DIR": "/srv",
        "PATH": "/bin",
    }
    assert unknown_variables(environ, cli) == [
        ("BATON_BOOTSTRAP_SERVERS", "BATON_BOOTSTRAP"),
        ("BATON_TOMBSTONE_RETENTON_S", "BATON_TOMBSTONE_RETENTION_S"),
        ("BATON_UPP_DATA_DIR", "BATON_UP_DATA_DIR"),
        ("BATON_ZQXJ", None),
    ]


def test_no_name_baton_reads_is_warned_about(known: set[str]) -> None:
    assert unknown_variables(dict.fromkeys(known, "1"), cli) == []


def test_the_warning_line() -> None:
    assert warning_text("BATON_TOMBSTONE_RETENTON_S", "BATON_TOMBSTONE_RETENTION_S") == (
        "baton: warning: BATON_TOMBSTONE_RETENTON_S is not a Baton setting, ignored "
        "(did you mean BATON_TOMBSTONE_RETENTION_S?)"
    )
    assert warning_text("BATON_ZQXJ", None) == (
        "baton: warning: BATON_ZQXJ is not a Baton setting, ignored"
    )
    # a name is the environment's: a control character is shown, not sent to the terminal
    assert warning_text("BATON_A\x1b[2J", None).startswith("baton: warning: BATON_A\\x1b[2J ")
    # a name of kilobytes is one short line, its length said
    long = warning_text("baton_" + "a" * 5000, None)
    assert (
        long
        == f"baton: warning: baton_{'a' * 94}... (5006 characters) is not a Baton setting, ignored"
    )


def test_a_help_variable_is_never_the_suggestion() -> None:
    assert closest("BATON_UP_HELO", {"BATON_UP_HELP", "BATON_UP_HOLD"}) == "BATON_UP_HOLD"
    assert closest("BATON_UP_HELO", {"BATON_UP_HELP"}) is None


def test_a_child_does_not_warn_again_about_what_its_parent_said() -> None:
    # `baton up` starts its worker, sink and alerter with a copy of its environment
    _register()
    environ = {"BATON_TOMBSTONE_RETENTON_S": "60", "BATON_BOOTSTRAP": "kafka:9092"}
    parent = io.StringIO()
    assert warn_unknown(environ, cli, parent) == ["BATON_TOMBSTONE_RETENTON_S"]
    assert parent.getvalue().count("\n") == 1
    child = io.StringIO()
    assert warn_unknown(dict(environ), cli, child) == []
    assert child.getvalue() == ""
    # a variable the child has and the parent had not is still said
    grandchild = io.StringIO()
    assert warn_unknown({**environ, "BATON_ZQXJ": "1"}, cli, grandchild) == ["BATON_ZQXJ"]
    assert "BATON_ZQXJ" in grandchild.getvalue()


def test_with_json_logs_the_warning_is_a_json_line() -> None:
    _register()
    out = io.StringIO()
    warn_unknown({"BATON_LOG_FORMAT": "json", "BATON_ZQXJ": "1"}, cli, out)
    line = json.loads(out.getvalue())
    assert (line["level"], line["component"]) == ("warning", "baton")
    assert line["message"] == "baton: warning: BATON_ZQXJ is not a Baton setting, ignored"


def _baton(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return subprocess.run(
        [sys.executable, "-m", "baton.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_baton_warns_on_stderr_and_runs_the_command() -> None:
    done = _baton({"BATON_TOMBSTONE_RETENTON_S": "60", "BATON_BOOTSTRAP": "x:1"}, "--version")
    assert done.returncode == 0
    assert "version" in done.stdout
    assert done.stderr == (
        "baton: warning: BATON_TOMBSTONE_RETENTON_S is not a Baton setting, ignored "
        "(did you mean BATON_TOMBSTONE_RETENTION_S?)\n"
    )


def test_known_variables_cost_no_command_module() -> None:
    # the settings, the registry and a named command's own: not every command's modules
    code = (
        "import sys, os\n"
        "from baton.cli.main import cli, _MODULES\n"
        "from baton.cli.env_check import warn_unknown\n"
        "env = {'BATON_BOOTSTRAP': 'x:1', 'BATON_SQL_PORT': '0', 'BATON_CLIENT_RETRIES': '1',"
        " 'BATON_TAIL_HELP': ''}\n"
        "assert warn_unknown(env, cli) == []\n"
        "print(sorted(m for m in set(_MODULES.values())"
        " if f'baton.cli.{m}' in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['tail_cmds']"


def test_the_configuration_section_names_every_setting_and_each_option_not_named_as_its_flag() -> (
    None
):
    # docs/deploy.md "Configuration" is the one place the variables are listed
    _register()
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [n for n in Settings.model_fields if f"`BATON_{n.upper()}`" not in section]
    assert missing == []
    for name in env_names.OPTION_VARIABLES | {env_names.REPLAY_TIMELINE}:
        assert f"`{name}`" in section
    for command in cli.commands.values():
        for param in command.params:
            flag = max(param.opts, key=len).lstrip("-").replace("-", "_")
            if isinstance(param, click.Option) and param.name and flag != param.name:
                assert f"`{param.name.upper()}`" in section, (command.name, param.opts)


def test_an_orchestrator_is_told_of_a_mistyped_client_variable_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from baton.streams.sdk import options

    monkeypatch.setattr(options, "_CLIENT_WARNED", set())
    monkeypatch.setenv("BATON_CLIENT_TIMOUT_S", "30")  # the timeout stays 5 s: say so
    monkeypatch.setenv("BATON_CLIENT_RETRIES", "2")  # read: never warned about
    with caplog.at_level(logging.WARNING, logger="baton.client"):
        resolved = options.ClientOptions.resolve("127.0.0.1:9092")
        options.ClientOptions.resolve("127.0.0.1:9092")  # the same process: said once
    assert resolved.retries == 2
    said = [r.getMessage() for r in caplog.records if r.name == "baton.client"]
    assert said == [
        "BATON_CLIENT_TIMOUT_S is not a Baton setting, ignored "
        "(did you mean BATON_CLIENT_TIMEOUT_S?)"
    ]


def test_an_orchestrator_is_told_which_client_variable_is_out_of_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # H1 (session 27): a raw pydantic ValidationError that named neither the variable nor
    # Baton; now a ValueError as the CLI words it
    from baton.streams.sdk import options

    monkeypatch.setenv("BATON_CLIENT_TIMEOUT_S", "0")
    with pytest.raises(ValueError) as raised:
        options.ClientOptions.resolve("127.0.0.1:9092")
    assert str(raised.value) == (
        "invalid settings: client_timeout_s (BATON_CLIENT_TIMEOUT_S): "
        "Input should be greater than 0, got '0'"
    )
    assert type(raised.value) is ValueError  # not pydantic's subclass


def test_a_setting_s_own_words_naming_its_value_are_not_repeated() -> None:
    from baton.cli.options import build_settings
    from baton.schemas.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        build_settings(metrics_port="abc")
    assert str(raised.value).count("got 'abc'") == 1, str(raised.value)


def test_a_check_that_fails_never_stops_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from baton.cli import env_check, main

    def broken(*args: object) -> list[str]:
        raise RuntimeError("click changed")

    monkeypatch.setattr(env_check, "warn_unknown", broken)
    monkeypatch.setenv("BATON_ZQXJ", "1")
    monkeypatch.setattr(sys, "argv", ["baton", "--version"])
    with pytest.raises(SystemExit) as ended:
        main.main()
    assert ended.value.code == 0
    assert "the BATON_* variables were not checked: click changed" in capsys.readouterr().err


def test_floors_that_keep_an_idle_process_off_a_core() -> None:
    # H2 (session 27, F6/F15): 1e-300 passed gt=0: an idle sink spun a core, and restarts
    # of a failing child never reached the limit
    from click.testing import CliRunner

    from baton.cli.main import _register, cli
    from baton.cli.options import build_settings
    from baton.schemas.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sink_batch_timeout_s \(BATON_SINK_BATCH_TIMEOUT_S\)"):
        build_settings(sink_batch_timeout_s=1e-300)
    _register()
    for option in ("--restart-window-s", "--restart-backoff-s"):
        result = CliRunner().invoke(cli, ["up", option, "1e-300"])
        assert result.exit_code == 2 and option in result.output, result.output


@pytest.mark.parametrize(
    ("env", "args", "named"),
    [
        ({"BATON_SQL_FMT": "xx"}, ["sql", "select 1"], "BATON_SQL_FMT"),  # automatic name
        ({"BATON_TAIL_LAST": "abc"}, ["tail", "decisions"], "BATON_TAIL_LAST"),
        ({}, ["sql", "-f", "xx", "select 1"], None),  # typed: the flag is what was wrong
        ({"BATON_SQL_FMT": "json"}, ["sql", "-f", "xx", "select 1"], None),  # typed over it
    ],
)
def test_a_refused_value_read_from_a_variable_names_the_variable(
    env: dict[str, str], args: list[str], named: str | None
) -> None:
    # H2, session 27: `BATON_SQL_FMT=xx baton sql` said "Invalid value for '--format'", a
    # flag the user never typed, and not where the value came from
    from click.testing import CliRunner

    _register()
    result = CliRunner().invoke(cli, args, env=env, auto_envvar_prefix="BATON")
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output
    if named:
        assert f"(the value came from the environment: {named})" in result.output
    else:
        assert "came from the environment" not in result.output


def test_a_variable_in_lowercase_read_by_nothing_is_warned_about(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # H1, session 27: pydantic reads a setting's variable in any case (`baton_partitions`),
    # click an option's in capitals only: `baton_sql_fmt` and a lowercase typo were read by
    # nothing and said nothing
    _register()
    environ = {
        "baton_partitions": "3",  # Settings reads it: not warned about
        "Baton_Client_Timeout_S": "5",  # ClientSettings reads it
        "baton_sql_fmt": "csv",  # an option's variable: click reads BATON_SQL_FMT only
        "baton_bootstarp": "kafka:9092",
        "BATON_SQL_FMT": "csv",
    }
    assert unknown_variables(environ, cli) == [
        ("baton_bootstarp", "BATON_BOOTSTRAP"),
        ("baton_sql_fmt", "BATON_SQL_FMT"),
    ]
    with_settings = {k: v for k, v in environ.items() if k == "baton_partitions"}
    assert unknown_variables(with_settings, cli) == []
    monkeypatch.setenv("baton_partitions", "3")
    assert Settings().partitions == 3  # what makes it "read"


def test_an_orchestrator_is_told_of_a_lowercase_client_typo(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from baton.streams.sdk import options

    monkeypatch.setattr(options, "_CLIENT_WARNED", set())
    monkeypatch.setenv("baton_client_timout_s", "30")
    monkeypatch.setenv("baton_client_retries", "2")  # read (pydantic: any case)
    with caplog.at_level(logging.WARNING, logger="baton.client"):
        resolved = options.ClientOptions.resolve("127.0.0.1:9092")
    assert resolved.retries == 2
    said = [r.getMessage() for r in caplog.records if r.name == "baton.client"]
    assert said == [
        "baton_client_timout_s is not a Baton setting, ignored "
        "(did you mean BATON_CLIENT_TIMEOUT_S?)"
    ]
