"""How a refused event is worded and classed: its dead letter's ``kind`` and message.

``parse_event`` (baton.schemas.events) validates an event with pydantic; a refusal becomes
``unknown_type``, ``out_of_range`` (a value of the right type beyond what Baton holds),
``bad_name`` (baton.schemas.names) or ``schema``, and its message names each field. A key the
event's type does not have is refused as ``schema`` with a "did you mean": an unknown key
dropped would have a misspelt ``action`` decided past the approval gate, a misspelt
``cost_usd`` never counted.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import ValidationError

__all__ = ["refusal"]


def refusal(
    kind: str, exc: ValidationError, tagged: bool, fields: tuple[str, ...]
) -> tuple[str, str]:
    """(the dead letter's kind, its message) for an event of type ``kind`` pydantic refused;
    ``tagged``: validated as the union (its field names start with the tag); ``fields``: the
    type's own, what an unknown key was meant to be."""
    errors = exc.errors()
    unknown = [e["loc"][-1] for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        return "schema", _unknown_fields(kind, unknown, fields)
    return _error_kind(errors), f"{kind}: {_explain(exc, tagged)}"


def _explain(exc: ValidationError, tagged: bool = True) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        # drop the union tag pydantic puts first, e.g. "handoff_requested.cost_usd"
        loc = ".".join(str(p) for p in err["loc"][int(tagged) :])
        parts.append(f"{loc or '<event>'}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


#: pydantic error types that mean "a value of the right type, but too big, small or long"
_RANGE_ERRORS = frozenset(
    {
        "less_than_equal",
        "less_than",
        "greater_than_equal",
        "greater_than",
        "string_too_long",
        "too_long",  # a list past its bound (tools)
        "int_parsing_size",
    }
)


def _out_of_range(error: Any) -> bool:
    kind, value = error["type"], error.get("input")
    if kind in ("int_type", "int_from_float") and isinstance(value, float):
        # a count too big for an integer: JSON parsers read 40 digits as a float (events
        # imports this module: its bound is read here, on the refusal's path only)
        from baton.schemas.events import MAX_RUN_COUNT

        return abs(value) > MAX_RUN_COUNT
    return kind in _RANGE_ERRORS or (kind == "value_error" and "out of range" in error["msg"])


def _error_kind(errors: list[Any]) -> str:
    """``schema``, unless every error is a value out of range (``out_of_range``) or a bad
    name among those (``bad_name``: baton.schemas.names)."""
    bad_names = [e for e in errors if e["type"] == "value_error" and "bad name" in e["msg"]]
    if not all(e in bad_names or _out_of_range(e) for e in errors):
        return "schema"
    return "bad_name" if bad_names else "out_of_range"


def _unknown_fields(kind: str, unknown: list[Any], fields: tuple[str, ...]) -> str:
    """``kind: unknown field 'actoin' (did you mean 'action'?)``: the first few unknown keys,
    each shown at most 64 characters long, and why they are refused."""
    parts = []
    for key in unknown[:3]:
        name = str(key)
        close = difflib.get_close_matches(name, fields, n=1) if len(name) <= 64 else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"{name[:64]!r}{'...' if len(name) > 64 else ''}{hint}")
    more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
    return (
        f"{kind[:64]}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(parts)}"
        f"{more}: Baton refuses a field it does "
        f"not know rather than decide without it (a newer client needs newer workers)"
    )
