"""`baton replay`'s progress bar on stderr."""

from __future__ import annotations

import sys
import time

import click

__all__ = ["_Progress"]


class _Progress:
    """A progress bar on stderr for a long replay: on a terminal redrawn in place from its
    first second, otherwise (logs) a line every 5 s; nothing for a short replay."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.tty = sys.stderr is not None and sys.stderr.isatty()  # (None: `2>&-`)
        self.every_s = 0.2 if self.tty else 5.0
        self.began = time.monotonic()
        self.last = self.began + (1.0 if self.tty else 0.0)
        self.shown = False

    def __call__(self, runs: int, decisions: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s or decisions >= self.total:
            return
        self.last, self.shown = now, True
        click.echo(self._line(runs, decisions, now), err=True, nl=not self.tty)

    def _line(self, runs: int, decisions: int, now: float) -> str:
        done = min(decisions / self.total, 1.0)
        bar = "█" * int(30 * done) + "░" * (30 - int(30 * done))
        rate = decisions / max(now - self.began, 1e-9)
        text = (
            f"baton replay: [{bar}] {decisions:,}/~{self.total:,} decisions, "
            f"{runs:,} runs ({rate:,.0f}/s)"
        )
        return f"\r{text}" if self.tty else text

    def done(self) -> None:
        if self.shown and self.tty:
            click.echo("", err=True)
