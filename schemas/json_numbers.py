"""Where a JSON number no float holds (``1e400``) sits in an event: the field its error names.

orjson stops at such a number ("number is infinity when parsed as double") without saying
which field holds it; the stdlib parser reads on (to a float infinity), so the event is read
again with it, only on this error path, and the first such number's key path is named.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["overflowing_number"]


class _Overflow(float):
    """A JSON number no float holds (``1e400``), as the stdlib parser reads it."""


def overflowing_number(raw: bytes, pos: int) -> str:
    """What to say of an event holding a number no float holds: its field and its text."""

    def number(text: str) -> float:
        value = float(text)
        return _Overflow(value) if value in (_INF, -_INF) else value

    try:
        doc = json.loads(
            raw, parse_float=number, parse_int=lambda t: number(t) if len(t) > 18 else int(t)
        )
    except (ValueError, RecursionError):
        doc = None
    where = _path_of(doc) if doc is not None else None
    at = (where if len(where) <= 120 else where[:117] + "...") if where else f"char {pos}"
    kind = doc.get("type") if isinstance(doc, dict) and isinstance(doc.get("type"), str) else None
    prefix = f"{kind[:64]}: " if kind else ""
    return (
        f"{prefix}{at}: number {_number_text(raw, pos)} is out of range (it overflows a 64-bit "
        f"float; expected a finite number within the field's bounds)"
    )


_INF = float("inf")


def _path_of(doc: Any) -> str | None:
    """The key path of the first _Overflow in a parsed document (``cost_usd``, ``tools[2]``).

    Walked with a stack, not recursion: the document may nest as deep as the parser took."""
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _Overflow):
            return path or "<event>"
        if isinstance(node, dict):
            children = [(v, f"{path}.{k}".lstrip(".")) for k, v in node.items()]
        elif isinstance(node, list):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(node)]
        else:
            continue
        stack.extend(reversed(children))  # the first child is looked at first
    return None


def _number_text(raw: bytes, pos: int) -> str:
    text = raw[pos : pos + 40].split(b",")[0].split(b"}")[0].split(b"]")[0].strip()
    return text.decode("ascii", "replace")[:32] or "?"
