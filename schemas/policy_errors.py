"""Policy validation errors as one line each: the key path, the bad value, the expectation.

``describe`` turns a pydantic error into ``multi_agent.max_handoffs: must be an integer >= 0,
got "eight"``, with "did you mean" for a misspelt key or reason; it walks the policy model
given to it, so it imports none.
"""

from __future__ import annotations

import difflib
from types import UnionType
from typing import Any, Union, get_args, get_origin

import orjson
from pydantic import BaseModel

from baton.schemas.decision import Reason

__all__ = ["describe", "show"]


def show(value: Any) -> str:
    """A value as a policy error quotes it: strings quoted, long lists cut."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (dict, list)):
        try:
            # YAML keys need not be text ({1: 2}, {on: true}): shown as text, never a traceback
            text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=repr).decode()
        except (TypeError, orjson.JSONEncodeError):
            text = repr(value)
        return text if len(text) < 60 else text[:57] + "..."
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value)
    return text if len(text) < 60 else f"{text[:20]}... ({len(text)} digits)"


_EXPECT: dict[str, str] = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "enum": "one of",
    "literal_error": "one of",
    "string_too_short": "a non-empty string",
}


def describe(err: Any, root: type[BaseModel]) -> str:
    """One line for one pydantic error of a policy whose model is ``root``: the key path,
    the value and what was expected (with "did you mean" for a misspelt key or reason)."""
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc) or "<top>"
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if loc and loc[-1] == "[key]" and kind == "string_type":  # tenants: {0: ...}
        path = ".".join(str(p) for p in loc[:-1])
        return f"{path}: a key must be text (a name), got {show(value)}; quote it"
    if loc and loc[-1] == "[key]":  # a bad mapping key, e.g. a misspelt fallback_by_reason
        path = ".".join(str(p) for p in loc[:-1])
        known = [r.value for r in Reason]
        hint = difflib.get_close_matches(str(value), known, n=1)
        tip = f"; did you mean {hint[0]}?" if hint else ""
        return f"{path}: unknown reason{tip} (known reasons: {', '.join(known)})"
    if kind == "extra_forbidden":
        known = _known_keys(root, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        tip = f"; did you mean {hint[0]}?" if hint else ""
        return f"{path}: unknown key{tip} (known keys: {', '.join(sorted(known))})"
    if kind == "value_error":  # our own validators say what they expect
        return f"{path}: {err['msg'].removeprefix('Value error, ')}, got {show(value)}"
    expected = _expected_for(root, loc, kind, ctx)
    return f"{path}: must be {expected}, got {show(value)}"


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The model (or dict value type) that the key path ``loc`` points into."""
    model: Any = root
    for part in loc:
        if isinstance(model, type) and issubclass(model, BaseModel):
            info = model.model_fields.get(str(part))
            if info is None:
                return None
            ann = _model_in(info.annotation)
            model = ("dict", ann.__args__[1]) if getattr(ann, "__origin__", None) is dict else ann
        elif isinstance(model, tuple):  # a dict key (tenant name, agent name)
            model = model[1]
        else:
            return None
    return model[1] if isinstance(model, tuple) else model


def _model_in(annotation: Any) -> Any:
    """The model of an optional block (``ToolPolicy | None``), else the annotation itself."""
    for arg in get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _known_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model = _walk(root, loc)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _field(root: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    model = _walk(root, loc[:-1]) if loc else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_fields.get(str(loc[-1]))
    return None


def _bounds(obj: Any) -> list[tuple[str, Any]]:
    """ge/gt/le/lt constraints anywhere in a FieldInfo, its metadata, or Annotated args of a
    union."""
    found: list[tuple[str, Any]] = []
    for attr in ("ge", "gt", "le", "lt"):
        v = getattr(obj, attr, None)
        if v is not None and not callable(v):
            found.append((attr, v))
    for meta in list(getattr(obj, "metadata", ()) or ()) + list(getattr(obj, "__metadata__", ())):
        found += _bounds(meta)
    for arg in getattr(obj, "__args__", ()) or ():
        found += _bounds(arg)
    ann = getattr(obj, "annotation", None)
    if ann is not None:
        found += _bounds(ann)
    return found


def _expected_for(
    root: type[BaseModel], loc: tuple[Any, ...], kind: str, ctx: dict[str, Any]
) -> str:
    if kind in ("enum", "literal_error"):
        return f"one of {ctx.get('expected', '')}"
    info = _field(root, loc)
    noun = _EXPECT.get(kind)
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        noun = "an integer" if info is not None and "int" in repr(info.annotation) else "a number"
    if noun in ("an integer", "a number") and info is not None:
        bounds = dict(reversed(_bounds(info)))  # the first found of each kind
        # the bound the value broke: the upper one for a value too big, else the lower one
        # (a text or a negative number: the usual mistakes)
        sides = ("le", "lt") if kind in ("less_than_equal", "less_than") else ("ge", "gt")
        for attr in sides:
            if attr in bounds:
                return f"{noun} {_SIGN[attr]} {_number(bounds[attr])}"
    return noun or "valid"


_SIGN = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _number(bound: Any) -> str:
    """A bound as a policy author would write it: integers in full, other numbers short."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"
