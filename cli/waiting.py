"""A blocking call with a line on stderr every few seconds while it waits.

`baton kill` against a hung worker waited its 30 s in silence, then exited 4 (session 29, H3):
a person at an incident's keyboard cannot tell a slow worker from a hung command."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import TypeVar

import click

__all__ = ["PROGRESS_EVERY_S", "with_progress"]

T = TypeVar("T")

#: seconds between two progress lines (none for a call that answers sooner)
PROGRESS_EVERY_S = 5.0


def with_progress(call: Callable[[], T], what: str, limit_s: float) -> T:
    """``call()``'s result (or its exception); while it runs, "baton: still waiting for
    ``what``: N s of ``limit_s``" on stderr every :data:`PROGRESS_EVERY_S` seconds."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-wait")
    try:
        future = pool.submit(call)
        started = time.monotonic()
        while True:
            try:
                return future.result(timeout=PROGRESS_EVERY_S)
            except concurrent.futures.TimeoutError:
                # the same class as the builtin TimeoutError since 3.11: the call's own (the
                # SDK's "no worker answered") is raised as it is, never taken for the wait's
                if future.done():
                    raise
                waited = time.monotonic() - started
                click.echo(
                    f"baton: still waiting for {what}: {waited:.0f} s of {limit_s:g}", err=True
                )
    finally:
        pool.shutdown(wait=False)
