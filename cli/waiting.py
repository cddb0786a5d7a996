"""A blocking call with a line on stderr every few seconds while it waits.

`baton kill` against a hung worker waited its 30 s in silence, then exited 4 (session 29, H3):
a person at an incident's keyboard cannot tell a slow worker from a hung command."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["PROGRESS_EVERY_S", "with_progress"]

T = TypeVar("T")

#: seconds between two progress lines (none for a call that answers sooner)
PROGRESS_EVERY_S = 5.0


def with_progress(call: Callable[[], T], what: str, limit_s: float) -> T:
    """``call()``'s result (or its exception); while it runs, "baton: still waiting for
    ``what``: N s of ``limit_s``" on stderr every :data:`PROGRESS_EVERY_S` seconds.

    The call runs in a daemon thread: Ctrl-C ends the wait at once and the process with it
    (a pool's thread is joined at exit, so Ctrl-C against a hung worker waited out the whole
    --timeout; session 30, H3)."""
    outcome: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the caller as it is
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name="baton-wait", daemon=True).start()
    started = time.monotonic()
    while not done.wait(PROGRESS_EVERY_S):
        waited = time.monotonic() - started
        click.echo(f"baton: still waiting for {what}: {waited:.0f} s of {limit_s:g}", err=True)
    answered, value = outcome[0]
    if not answered:
        raise value
    return value  # type: ignore[no-any-return]
