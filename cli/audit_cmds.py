"""The audit trail's commands (sink, sql, trace, alerts), registered on the ``baton`` group."""

from __future__ import annotations

import click

from baton.cli.alerts_cmds import alerts_group
from baton.cli.query_cmds import sql_cmd, trace_cmd
from baton.cli.sink_cmd import sink_cmd

__all__ = ["register"]


def register(cli: click.Group) -> None:
    """Add the audit commands to the ``baton`` group."""
    for command in (sink_cmd, sql_cmd, trace_cmd, alerts_group):
        cli.add_command(command)
