"""``baton send`` and ``baton tail``: events in and decisions out with nothing but Baton."""

from __future__ import annotations

import click

__all__ = ["register"]


def register(cli: click.Group) -> None:
    pass
