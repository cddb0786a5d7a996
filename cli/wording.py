"""How the commands count things in the lines they print: "1 run", "2 runs", never "1 runs"."""

from __future__ import annotations

__all__ = ["counted"]


def counted(n: int, noun: str, plural: str | None = None, *, commas: bool = True) -> str:
    """``n`` and ``noun``, the noun in the plural unless ``n`` is 1 (``plural``: its plural
    when it is not ``noun`` + "s"); ``commas``: thousands separated ("12,000 runs")."""
    number = f"{n:,}" if commas else str(n)
    return f"{number} {noun if n == 1 else plural or noun + 's'}"
