"""Session 25: `baton --help` lists each command's first sentence whole (it cut them at about
60 characters: "Start everything on this machine: embedded Kafka broker,..."), within 80 columns."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from baton.cli.main import _MODULES, _register, cli

pytestmark = pytest.mark.unit


def test_the_command_list_shows_each_first_sentence_whole_within_80_columns() -> None:
    _register()
    page = CliRunner().invoke(cli, ["--help"], terminal_width=80).output
    listing = page.split("Commands:", 1)[1]
    assert max(map(len, page.splitlines())) <= 80
    ctx = click.Context(cli, info_name="baton")
    text = " ".join(listing.split())
    for name in _MODULES:
        command = cli.get_command(ctx, name)
        assert command is not None and command.help
        first = command.short_help or command.help.split("\n\n")[0]
        sentence = " ".join(first.split(". ")[0].split()).rstrip(".")
        assert sentence in text, f"{name}: {sentence!r}"
    assert "..." not in listing


@pytest.mark.parametrize("group", ["policy", "audit", "keys", "alerts", "schema"])
def test_a_command_groups_list_shows_each_first_sentence_whole_too(group: str) -> None:
    # `baton policy --help`: "current  Which policy the workers use, and why: the --policy..."
    _register()
    page = CliRunner().invoke(cli, [group, "--help"], terminal_width=80).output
    listing = page.split("Commands:", 1)[1]
    assert max(map(len, page.splitlines())) <= 80
    ctx = click.Context(cli, info_name="baton")
    parent = cli.get_command(ctx, group)
    assert isinstance(parent, click.Group)
    text = " ".join(listing.split())
    for command in parent.commands.values():
        assert command.help
        first = command.short_help or command.help.split("\n\n")[0]
        assert " ".join(first.split(". ")[0].split()).rstrip(".") in text, command.name
    assert "..." not in listing
