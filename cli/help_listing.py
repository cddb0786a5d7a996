"""The command list of a group's ``--help``: each command's first sentence whole, wrapped.

click cuts a command's description at the line's width with "..." ("Start everything on this
machine: embedded Kafka broker,..."); a reader of `baton --help` or `baton policy --help`
then saw half of what each command does. Here the first sentence is kept whole and wrapped in
its column.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

__all__ = ["WHOLE_SENTENCE", "SentenceGroup", "write_commands"]

#: no limit on a command's short help: its first sentence, however long
WHOLE_SENTENCE = 1_000_000


def write_commands(
    formatter: click.HelpFormatter, rows: Sequence[tuple[str, click.Command | None]]
) -> None:
    """``(name, command)`` rows as a definition list, each command's first sentence whole;
    a hidden or missing command is left out."""
    shown = [
        (name, command.get_short_help_str(WHOLE_SENTENCE))
        for name, command in rows
        if command is not None and not command.hidden
    ]
    if not shown:
        return
    # write_dl leaves room for one section's indent, not for the sections within sections of
    # `baton --help`: its lines passed the width by 2 there (82 columns at 80)
    extra = max(formatter.current_indent - 2, 0)
    formatter.width -= extra
    try:
        formatter.write_dl(shown)
    finally:
        formatter.width += extra


class SentenceGroup(click.Group):
    """A click group whose ``--help`` lists each command's first sentence whole."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        if any(command is not None and not command.hidden for _, command in rows):
            with formatter.section("Commands"):
                write_commands(formatter, rows)
