"""``baton down``: stop the `baton up` of a data dir as Ctrl-C in its terminal does.

Stopping a stack meant finding its pid in ``stack.json`` and sending it SIGTERM by hand (H2,
session 33: operators typed `baton down` and got "No such command"). The pid signalled is
the one the data dir's lock names while it is held (``baton up`` writes it there when it takes
the lock), and only when it runs ``baton up``: a stale record, or one naming another pid,
never sends a signal to another process, and a stack still starting (not recorded yet) is
stopped too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import click

from baton.cli.options import FiniteFloatRange
from baton.cli.stack_file import (
    LOCK_FILE,
    StackRecord,
    is_baton_up,
    lock_held,
    lock_pid,
    read_record,
    record_path,
)
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
    record, where = found.record, found.data_dir
    path = record_path(where)
    if not lock_held(where):
        _nothing_to_stop(record, path, found.source)
        return
    # the process holding the data dir's lock is its `baton up`, recorded yet or not: a start
    # not recorded yet was "nothing to stop" and came up anyway, and a record naming some
    # other pid had that pid signalled while the stack ran on (H1, session 34)
    pid = lock_pid(where)
    if pid is None and record is not None and record.live(where):
        pid = record.pid  # a `baton up` of before the pid in the lock
    if pid is None or not is_baton_up(pid):
        raise StillStopping(
            f"{where / LOCK_FILE} is held, but not by a `baton up` this can name (pid "
            f"{pid or 'unknown'}); find it with `fuser {where / LOCK_FILE}`"
        )
    named = (
        f"{record.describe()}, Kafka at {record.bootstrap}"
        if record is not None and record.pid == pid and record.state != "stopped"
        else f"baton up pid {pid} (starting: not recorded in {path} yet)"
    )
    click.echo(f"baton down: stopping {named}")
    with contextlib.suppress(ProcessLookupError):  # it ended between the check and now
        os.kill(pid, signal.SIGTERM)
    started = time.monotonic()
    next_line = started + PROGRESS_EVERY_S
    while lock_held(where):  # released when its process ends
        now = time.monotonic()
        if now - started >= timeout:
            raise StillStopping(
                f"baton up pid {pid} is still stopping after {timeout:g} s (see "
                f"{where / 'logs'}); wait, or end it with `kill -9 {pid}` (a restart "
                "restores the runs from the audit)"
            )
        if now >= next_line:
            click.echo(
                f"baton down: still stopping: {now - started:.0f} s of {timeout:g}", err=True
            )
            next_line += PROGRESS_EVERY_S
        time.sleep(0.2)
    after = read_record(where)
    how = "stopped" if after is not None and after.state == "stopped" else "ended"
    kept = (
        f"the audit stays in {where / 'chdb'} (`baton up` again restores the runs from it)"
        if after is None or after.clickhouse_dsn is not None
        else "it kept no audit (--no-audit): a start again begins from zero"
    )
    click.echo(f"baton down: {how} in {time.monotonic() - started:.1f} s; {kept}")


def _nothing_to_stop(record: StackRecord | None, path: Path, source: str) -> None:
    """No `baton up` holds the data dir: say what its record says (exit 2 with none)."""
    if record is None:
        raise ConfigError(
            f"no `baton up` stack to stop: {path} (from {source}) does not exist; run "
            "this in the folder where `baton up` runs, or pass --data-dir DIR (BATON_DATA_DIR)"
        )
    if record.state == "stopped":
        click.echo(
            f"baton down: the stack in {path.parent} stopped at "
            f"{record.stopped_at:%Y-%m-%d %H:%M:%S} UTC; nothing to stop"
        )
        return
    click.echo(
        f"baton down: {record.describe()} is not running (killed or crashed: its broker, "
        f"worker, sink and alerter end with it); nothing to stop. {path} is stale: the "
        "next `baton up` replaces it"
    )


def register(cli: click.Group) -> None:
    cli.add_command(down_cmd)
