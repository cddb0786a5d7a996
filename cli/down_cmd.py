"""``baton down``: stop the `baton up` of a data dir as Ctrl-C in its terminal does.

Stopping a stack meant finding its pid in ``stack.json`` and sending it SIGTERM by hand (H2,
session 33: operators typed `baton down` and got "No such command"). The pid is signalled only
while its record is live (the pid runs ``baton up`` and holds the data dir's lock), so a
stale record never sends a signal to a process that reused the pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import click

from baton.cli.options import FiniteFloatRange
from baton.cli.stack_file import read_record, record_path
from baton.cli.stack_record import data_dir_option, find_stack
from baton.cli.waiting import PROGRESS_EVERY_S
from baton.schemas.errors import BatonError, ConfigError

__all__ = ["down_cmd", "register"]


class StillStopping(BatonError):
    """``baton up`` did not end within --timeout (exit 1)."""


@click.command("down")
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=1, max=3600),
    default=60.0,
    show_default=True,
    help="seconds to wait for the stack to stop (its worker finishes the batch in hand)",
)
@data_dir_option
def down_cmd(timeout: float, data_dir: Path | None) -> None:
    """Stop the `baton up` of this folder (./.baton, or --data-dir / BATON_DATA_DIR) as Ctrl-C
    in its terminal does: SIGTERM to the pid its stack.json names, then wait until its broker,
    worker, sink and alerter have ended. Exit 0 when it stopped or was not running, 1 when it
    is still stopping after --timeout, 2 when no stack was ever recorded there. The audit
    stays in DATA_DIR/chdb: `baton up` again restores the runs from it."""
    found = find_stack(data_dir)
    record = found.record
    path = record_path(found.data_dir)
    if record is None:
        raise ConfigError(
            f"no `baton up` stack to stop: {path} (from {found.source}) does not exist; run "
            "this in the folder where `baton up` runs, or pass --data-dir DIR (BATON_DATA_DIR)"
        )
    if record.state == "stopped":
        click.echo(
            f"baton down: the stack in {found.data_dir} stopped at "
            f"{record.stopped_at:%Y-%m-%d %H:%M:%S} UTC; nothing to stop"
        )
        return
    if not record.live(found.data_dir):
        click.echo(
            f"baton down: {record.describe()} is not running (killed or crashed: its broker, "
            f"worker, sink and alerter end with it); nothing to stop. {path} is stale: the "
            "next `baton up` replaces it"
        )
        return
    click.echo(f"baton down: stopping {record.describe()}, Kafka at {record.bootstrap}")
    with contextlib.suppress(ProcessLookupError):  # it ended between the check and now
        os.kill(record.pid, signal.SIGTERM)
    started = time.monotonic()
    next_line = started + PROGRESS_EVERY_S
    while record.live(found.data_dir):
        now = time.monotonic()
        if now - started >= timeout:
            raise StillStopping(
                f"{record.describe()} is still stopping after {timeout:g} s (see "
                f"{record.logs.get('worker', found.data_dir / 'logs')}); wait, or end it "
                f"with `kill -9 {record.pid}` (a restart restores the runs from the audit)"
            )
        if now >= next_line:
            click.echo(
                f"baton down: still stopping: {now - started:.0f} s of {timeout:g}", err=True
            )
            next_line += PROGRESS_EVERY_S
        time.sleep(0.2)
    after = read_record(found.data_dir)
    how = "stopped" if after is not None and after.state == "stopped" else "ended"
    kept = (
        f"the audit stays in {found.data_dir / 'chdb'} (`baton up` again restores the runs from it)"
        if record.clickhouse_dsn is not None
        else "it kept no audit (--no-audit): a start again begins from zero"
    )
    click.echo(f"baton down: {how} in {time.monotonic() - started:.1f} s; {kept}")


def register(cli: click.Group) -> None:
    cli.add_command(down_cmd)
