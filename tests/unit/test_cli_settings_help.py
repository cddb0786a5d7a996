"""Every BATON_* setting is in the --help of the commands that read it (the settings model
against the help text: a new setting without help fails here)."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from baton.cli import main
from baton.cli.options import AUDIT_CONNECTION, KAFKA_CONNECTION, with_connection_groups
from baton.schemas.settings import Settings


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


@pytest.fixture(scope="module")
def commands() -> dict[tuple[str, ...], click.Command]:
    main._register()
    found: dict[tuple[str, ...], click.Command] = {}
    for path in _commands(main.cli):
        group: click.Command = main.cli
        for name in path:
            assert isinstance(group, click.Group)
            group = group.commands[name]
        found[path] = group
    return found


@pytest.fixture(scope="module")
def helps(commands: dict[tuple[str, ...], click.Command]) -> dict[tuple[str, ...], str]:
    runner = CliRunner()
    texts = {}
    for path in commands:
        result = runner.invoke(main.cli, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
        texts[path] = result.output
    return texts


def _variable(name: str) -> str:
    return f"BATON_{name.upper()}"


def test_every_setting_is_in_the_help_of_some_command(helps: dict[tuple[str, ...], str]) -> None:
    shown = "\n".join(helps.values())
    missing = [_variable(n) for n in Settings.model_fields if _variable(n) not in shown]
    assert not missing, f"settings in no command's --help: {missing}"


@pytest.mark.parametrize(
    ("option", "group"),
    [("bootstrap", KAFKA_CONNECTION), ("clickhouse_dsn", AUDIT_CONNECTION)],
    ids=["kafka", "clickhouse"],
)
def test_a_client_lists_its_whole_connection_group(
    commands: dict[tuple[str, ...], click.Command],
    helps: dict[tuple[str, ...], str],
    option: str,
    group: tuple[str, ...],
) -> None:
    """A command that connects reads the group's security settings too (SASL, SSL, CA)."""
    clients = [
        path
        for path, command in commands.items()
        if any(
            p.name == option and _variable(option) in (getattr(p, "help", "") or "")
            for p in command.params
        )
    ]  # `baton demo --bootstrap` names a `baton up`, not a setting: it reads no variable
    assert len(clients) >= 3  # the option does find the clients
    gaps = {
        " ".join(path): [_variable(n) for n in group if _variable(n) not in helps[path]]
        for path in clients
    }
    assert not {k: v for k, v in gaps.items() if v}, "connection settings missing from --help"


@pytest.mark.parametrize(
    ("command", "settings"),
    [
        (
            ("worker",),
            ("app_id", "batch_size", "replication_factor", "audit_chain_key", "policy"),
        ),
        (("up",), ("app_id", "topic_prefix", "replication_factor", "policy", "partitions")),
        (("alerts",), ("app_id", "topic_prefix", "webhook_url", "replication_factor")),
        (("sink",), ("app_id", "topic_prefix", "audit_ttl_days", "sink_batch_timeout_s")),
        (("kill",), ("topic_prefix",)),
        (("audit", "verify"), ("audit_chain_key",)),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) and len(v) <= 2 else None,
)
def test_each_command_shows_what_it_reads(
    helps: dict[tuple[str, ...], str], command: tuple[str, ...], settings: tuple[str, ...]
) -> None:
    text = helps[command]
    missing = [_variable(n) for n in settings if _variable(n) not in text]
    assert not missing, f"`baton {' '.join(command)} --help` lacks {missing}"


def test_the_connection_groups_are_settings() -> None:
    assert set(KAFKA_CONNECTION + AUDIT_CONNECTION) <= set(Settings.model_fields)
    assert with_connection_groups(("topic_prefix", "bootstrap", "connect_timeout_s")) == (
        "topic_prefix",
        *KAFKA_CONNECTION,
    )


def _own_default_command() -> click.Command:
    from baton.cli.options import build_settings, setting_options

    @click.command()
    @setting_options("session_timeout_s", "partitions", defaults={"session_timeout_s": 6.0})
    def cmd(**opts: object) -> None:
        settings = build_settings(**opts)
        click.echo(f"{settings.session_timeout_s} {settings.partitions}")

    return cmd


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, "6.0 8"),  # the command's own default
        (["--session-timeout-s", "12"], {}, "12.0 8"),  # the flag wins
        ([], {"BATON_SESSION_TIMEOUT_S": "15"}, "15.0 8"),  # so does the variable
        (["--session-timeout-s", "9"], {"BATON_SESSION_TIMEOUT_S": "15"}, "9.0 8"),
    ],
)
def test_a_commands_own_default_gives_way_to_its_flag_and_variable(
    args: list[str], env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BATON_SESSION_TIMEOUT_S", raising=False)
    monkeypatch.delenv("BATON_PARTITIONS", raising=False)
    result = CliRunner().invoke(_own_default_command(), args, env=env)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == expected


def test_baton_up_says_its_own_session_timeout(helps: dict[tuple[str, ...], str]) -> None:
    # Tansu joins a group after half the session timeout: baton up's stack is ready 2 s sooner
    up = " ".join(helps[("up",)].split())
    assert "BATON_SESSION_TIMEOUT_S; default 6.0]" in up
    worker = " ".join(helps[("worker",)].split())
    assert "BATON_SESSION_TIMEOUT_S; default 10.0]" in worker


def test_no_message_repeats_a_secret_setting_s_value() -> None:
    """A BATON_AUDIT_CHAIN_KEY of 100 bytes was refused with the key printed whole (session 45):
    a secret setting's value is never repeated, and every SecretStr field is listed as one."""
    from pydantic import SecretStr, ValidationError

    from baton.schemas.env_names import SECRET_FIELDS, settings_problems
    from baton.schemas.settings import Settings

    secret = {
        name for name, info in Settings.model_fields.items() if "SecretStr" in str(info.annotation)
    }
    assert secret == SECRET_FIELDS
    key = "k" * 100
    try:
        Settings(audit_chain_key=SecretStr(key))
    except ValidationError as exc:
        said = settings_problems(exc)
    else:
        raise AssertionError("a 100-byte chain key was taken")
    assert "at most 64" in said and "BATON_AUDIT_CHAIN_KEY" in said
    assert "kkkk" not in said and "not repeated: a secret" in said
    assert Settings(audit_chain_key=SecretStr("k" * 64)).audit_chain_key is not None
