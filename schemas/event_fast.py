"""A run event built without pydantic's per-field validation, where that is surely the same.

``parse_event`` reads every event the worker consumes and every recorded input ``baton
replay`` decides again; pydantic's validation of one costs ~29k instructions (~16 % of a
compiled replay's decision). ``fast_event`` checks the common event (its fields of the
expected JSON types, within their bounds, its times in the forms Baton and its SDK write) by
hand and builds the very object pydantic would: the same ``__dict__`` (field order, values and their
types), fields set, no extra, no private. Anything it is not sure of (a missing field, a bool
or a float where an int goes, a bound, a time in any other form, a name the fold refuses) it
declines (None), and pydantic decides as before, errors and all.

What each field holds is read from the model's own fields at import (``fast_spec``): a field
of any other shape, a validator, a config or a default beyond these leaves its model without
a fast path (None), never with a guess. tests/unit/test_event_fast.py holds the two equal on
random and hostile events.
"""

from __future__ import annotations

import inspect
import types
import typing
from datetime import datetime
from typing import Any, Final, final

import orjson
from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import BaseModel, WrapValidator
from pydantic.fields import FieldInfo
from pydantic.types import AllowInfNan, Strict

from baton.schemas.event_times import MAX_EVENT_TIME, MIN_EVENT_TIME, event_time_from
from baton.schemas.names import EventNameRefused, fold_event_names

__all__ = ["fast_event", "fast_parse", "fast_parse_text", "fast_spec"]

#: what a field holds (the first item of its kind tuple): a literal (the ``type`` tag), a
#: string of a length (ids, names once folded, text), a float of money, an int count, an
#: event time, a list of names
LITERAL: Final = 0
TEXT: Final = 1
MONEY: Final = 2
COUNT: Final = 3
TIME: Final = 4
NAMES: Final = 5


@final
class FieldRule:
    """How ``fast_event`` checks one field: what it holds, whether it may be null and must be
    there, its bounds (lengths of text and lists, values of counts; ``money``: of money), the
    literal's value. A plain class: compiled, its attributes are read as C fields."""

    def __init__(
        self,
        what: int,
        nullable: bool,
        required: bool,
        low: int,
        high: int,
        money: float,
        literal: str,
    ) -> None:
        self.what = what
        self.nullable = nullable
        self.required = required
        self.low = low
        self.high = high
        self.money = money
        self.literal = literal


Kind = FieldRule
#: a model's fast path: (the model, its fields' checks by name, its fields and defaults in
#: declaration order (a required field: _REQUIRED), how many are required, the name
#: fields and name-list fields the fold reads, the longest name list)
Spec = tuple[type, dict[str, Kind], dict[str, Any], int, tuple[str, ...], tuple[str, ...], int]

_REQUIRED: Final = object()
_CONFIG: Final = {"frozen": True, "extra": "forbid", "str_strip_whitespace": False}


#: the longest name (baton.schemas.names.MAX_NAME): a name list's item is checked against it
_NAME_LONGEST: Final = 256


def _strip_none(annotation: Any) -> tuple[Any, bool]:
    """(``annotation`` without ``| None``, whether it had it)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _shape(annotation: Any, metadata: list[Any], mark: Any) -> tuple[int, Any, Any] | None:
    """(what a value of this type and metadata holds, its low and high bound), or None when
    it is any other shape than those ``fast_event`` checks; ``mark`` (a name's) is allowed."""
    if typing.get_origin(annotation) is typing.Annotated:
        info = FieldInfo.from_annotation(annotation)
        return _shape(info.annotation, list(info.metadata) + metadata, mark)
    kinds = [type(m) for m in metadata if m is not mark]
    values = [m for m in metadata if m is not mark]
    if annotation is str and kinds in ([MinLen, MaxLen], [MaxLen]):
        low = values[0].min_length if kinds[0] is MinLen else 0
        return TEXT, low, values[-1].max_length
    if (
        annotation is float
        and kinds == [Strict, Ge, Le, AllowInfNan]
        and values[0].strict is True
        and values[1].ge == 0
        and values[3].allow_inf_nan is False
    ):
        return MONEY, 0, values[2].le
    if annotation is int and kinds == [Strict, Ge, Le] and values[0].strict is True:
        return (COUNT, 0, values[2].le) if values[1].ge == 0 else None
    if (
        annotation is datetime
        and kinds == [WrapValidator]
        and values[0].func is event_time_from
        and len(metadata) == 1
    ):
        return TIME, None, None
    if typing.get_origin(annotation) is list and kinds == [MaxLen]:
        item = _shape(typing.get_args(annotation)[0], [], mark)
        if item == (TEXT, 1, _NAME_LONGEST):
            return NAMES, 0, values[0].max_length
    return None


def fast_spec(model: Any, mark: Any, max_items: int) -> Spec | None:
    """The fast path of ``model`` (a run event class), or None when any of its fields, its
    validators or its config is of a shape ``fast_event`` does not reproduce."""
    decorators = model.__pydantic_decorators__
    if (
        dict(model.model_config) != _CONFIG
        or set(decorators.model_validators) != {"_fold_names"}
        or decorators.validators
        or decorators.field_validators
        or decorators.root_validators
        or model.__pydantic_post_init__ is not None
        or model.__private_attributes__
        or model.__pydantic_root_model__
        or any(inspect.getattr_static(model, n) is not BaseModel.__dict__[n] for n in _SLOTS)
    ):
        return None
    kinds: dict[str, Kind] = {}
    defaults: dict[str, Any] = {}
    for field, info in model.model_fields.items():
        if (
            info.alias is not None
            or info.validation_alias is not None
            or info.default_factory is not None
            or info.validate_default
            or info.discriminator is not None
        ):
            return None
        required = info.is_required()
        annotation, nullable = _strip_none(info.annotation)
        if typing.get_origin(annotation) is typing.Literal:
            (literal,) = typing.get_args(annotation)
            if nullable or type(literal) is not str or info.default != literal or info.metadata:
                return None
            kinds[field] = FieldRule(LITERAL, False, False, 0, 0, 0.0, literal)
            defaults[field] = info.default
            continue
        shape = _shape(annotation, list(info.metadata), mark)
        if shape is None:
            return None
        name = any(m is mark for m in info.metadata) or mark in typing.get_args(annotation)
        if (name and field not in model._names) or (shape[0] == NAMES) != (
            field in model._name_lists
        ):
            return None
        if not required and not (info.default is None and nullable) and not _in(shape, info):
            return None
        low, high = shape[1], shape[2]
        if shape[0] == MONEY:
            if type(high) is not float or high != int(high):
                return None
            kinds[field] = FieldRule(MONEY, nullable, required, 0, int(high), high, "")
        elif shape[0] == TIME:
            kinds[field] = FieldRule(TIME, nullable, required, 0, 0, 0.0, "")
        elif type(low) is int and type(high) is int:
            kinds[field] = FieldRule(shape[0], nullable, required, low, high, 0.0, "")
        else:
            return None
        defaults[field] = _REQUIRED if required else info.default
    count = sum(1 for k in kinds.values() if k.required)
    return model, kinds, defaults, count, model._names, model._name_lists, max_items


def _in(shape: tuple[int, Any, Any], info: Any) -> bool:
    """Whether a field's default is a value its own check passes (as pydantic never checks
    it: ``validate_default`` is off), of the exact type the check returns."""
    value = info.default
    if shape[0] == TEXT:
        return type(value) is str and shape[1] <= len(value) <= shape[2]
    if shape[0] == MONEY:
        return type(value) is float and 0 <= value <= shape[2]
    if shape[0] == COUNT:
        return type(value) is int and 0 <= value <= shape[2]
    return False


_new: Final = object.__new__
#: a byte searched for as an int: a bytes needle first fails (and formats) an int conversion
_BACKSLASH: Final = ord("\\")
#: the slots every pydantic model has (BaseModel's), set as its validation sets them: through
#: their own descriptors (what object.__setattr__ finds for these names, a quarter cheaper)
_SLOTS: Final = (
    "__dict__",
    "__pydantic_fields_set__",
    "__pydantic_extra__",
    "__pydantic_private__",
)
_set_dict: Final = BaseModel.__dict__["__dict__"].__set__
_set_fields_set: Final = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra: Final = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private: Final = BaseModel.__dict__["__pydantic_private__"].__set__
_from_iso: Final = datetime.fromisoformat
_MIN_TIME: Final = MIN_EVENT_TIME
_MAX_TIME: Final = MAX_EVENT_TIME


_loads: Final = orjson.loads


def fast_parse(raw: bytes, specs: dict[str, Spec], most: int) -> Any:
    """``parse_event``'s common case in one compiled call: the event :func:`fast_event`
    builds from ``raw`` (at most ``most`` bytes of a JSON object whose ``type`` has a spec in
    ``specs``), or None for anything else, which ``parse_event`` then reads, errors and all
    (an interpreted caller's frames cost a compiled replay ~4 % of its decision). What
    fast_event declines on its bytes alone (non-ASCII, escapes) is declined before the JSON
    is read, so such an input is read once, by parse_event (a 60 KB non-ASCII event read
    twice cost a worker twice its parse: H1, session 16)."""
    if len(raw) > most or not raw.isascii() or _BACKSLASH in raw:
        return None
    return _read(raw, specs)


def fast_parse_text(text: str, specs: dict[str, Spec], most: int) -> Any:
    """:func:`fast_parse` of ``text.encode()``, without encoding it (a recorded input, which
    `baton replay` reads as text): an ASCII text's length is its bytes', and orjson reads a
    str's UTF-8 as it reads bytes."""
    if not text.isascii() or len(text) > most or "\\" in text:
        return None
    return _read(text, specs)


def _read(source: bytes | str, specs: dict[str, Spec]) -> Any:
    """The rest of :func:`fast_parse` and :func:`fast_parse_text`, once they checked
    ``source``'s bytes or characters (ASCII, no escapes, not too long): its event, or None
    (the call costs a compiled replay ~21 instructions a recorded input: 0.015 %)."""
    try:
        doc = _loads(source)
    except ValueError:  # orjson.JSONDecodeError: parse_event words it
        return None
    if type(doc) is not dict:
        return None
    kind = doc.get("type")
    if type(kind) is not str:
        return None
    spec = specs.get(kind)
    return None if spec is None else _built(doc, spec)


def fast_event(raw: bytes, doc: dict[str, Any], spec: Spec) -> Any:
    """The event pydantic would make of ``doc`` (what orjson read from ``raw``, its ``type``
    the model's), or None when this is not surely it: pydantic then decides.

    Only an event of ASCII text without escapes (``\\u``, ``\\t``...) is built: a name's
    NFKC fold, and lengths counted in characters, are left to pydantic's path otherwise."""
    if not raw.isascii() or _BACKSLASH in raw:
        return None
    return _built(doc, spec)


def _built(doc: dict[str, Any], spec: Spec) -> Any:
    """:func:`fast_event` once its bytes are known to be ASCII without escapes."""
    model, kinds, defaults, required, names, lists, max_items = spec
    try:
        doc = fold_event_names(doc, names, lists, max_items)
    except EventNameRefused:
        return None
    found = 0
    changed: list[tuple[str, Any]] = []  # the values read as another object (times, lists)
    for field, value in doc.items():
        kind = kinds.get(field)
        if kind is None:
            return None  # extra="forbid": parse_event refuses it, naming the key
        what = kind.what
        if value is None:
            if not kind.nullable:
                return None
        elif what == TEXT:
            if type(value) is not str or not kind.low <= len(value) <= kind.high:
                return None
        elif what == TIME:
            # event_time_from's own fast form (times as Baton and most clients write them):
            # any other value or form goes through pydantic's reading of it, so is declined
            if not (
                type(value) is str
                and (
                    (len(value) == 25 and value[19] == "+" and value[-6:] == "+00:00")
                    or (len(value) == 32 and value[19] == "." and value[-6:] == "+00:00")
                    # pydantic's own (the SDK's): "Z", whole seconds or six digits
                    or (len(value) == 20 and value[19] == "Z")
                    or (len(value) == 27 and value[19] == "." and value[26] == "Z")
                )
                and value[10] == "T"
                and value[4] == value[7] == "-"  # not a week date (event_time_from's form)
                and value[13] == value[16] == ":"
            ):
                return None
            try:
                value = _from_iso(value)
            except ValueError:
                return None
            if not _MIN_TIME <= value < _MAX_TIME:
                return None
            changed.append((field, value))
        elif what == MONEY:
            if type(value) is float:
                if not 0.0 <= value <= kind.money:
                    return None
            elif type(value) is int and 0 <= value <= kind.high:
                changed.append((field, float(value)))  # strict float takes an int, as a float
            else:
                return None
        elif what == COUNT:
            if type(value) is not int or not 0 <= value <= kind.high:
                return None
        elif what == LITERAL:
            if type(value) is not str or value != kind.literal:
                return None
        elif what == NAMES:
            if type(value) is not list or len(value) > kind.high:
                return None
            for item in value:
                if type(item) is not str or not 0 < len(item) <= _NAME_LONGEST:
                    return None
            changed.append((field, list(value)))
        else:
            return None
        if kind.required:
            found += 1
    if found != required:
        return None
    values = dict(defaults)  # the fields in their order; then the values read
    values.update(doc)
    for field, value in changed:
        values[field] = value
    event: Any = _new(model)
    _set_dict(event, values)
    _set_fields_set(event, set(doc))  # the fields set: every key (none is extra)
    _set_extra(event, None)
    _set_private(event, None)
    return event
