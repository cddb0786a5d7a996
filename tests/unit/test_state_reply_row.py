"""A stored reply's row is the decision's fields in DECISION_FIELDS order in both builds:
compiled, state_replies reads them as native fields written out one by one (``_native_row``),
which must name every field, in order, each as itself; the record's bytes are the same."""

from __future__ import annotations

import ast
from pathlib import Path

import orjson
import pytest

import baton.processors.state_replies as replies_module
from baton.processors.state_replies import _decision_row, _native_row
from baton.schemas.decision import DECISION_FIELDS, Decision
from tests.unit.test_decision_json import _decisions

pytestmark = pytest.mark.unit


def _row_attributes() -> list[str]:
    """The attributes ``_native_row``'s tuple reads, in order, from its source."""
    source = Path(replies_module.__file__).with_suffix(".py")
    if not source.exists():  # a compiled build: its source next to the tree's
        source = Path(__file__).parents[2] / "processors" / "state_replies.py"
    tree = ast.parse(source.read_text())
    (function,) = [
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_native_row"
    ]
    (returned,) = [n for n in ast.walk(function) if isinstance(n, ast.Return)]
    row = returned.value
    assert isinstance(row, ast.Tuple)
    names = []
    for value in row.elts:
        assert isinstance(value, ast.Attribute), ast.dump(value)
        names.append(value.attr)
    return names


def test_the_native_row_names_every_field_in_order() -> None:
    assert _row_attributes() == list(DECISION_FIELDS)


@pytest.mark.parametrize("d", _decisions())
def test_the_native_row_is_the_attrgetters_row_value_for_value(d: Decision) -> None:
    native, read = _native_row(d), _decision_row(d)
    assert len(native) == len(DECISION_FIELDS)
    assert all(a is b or (a == b and type(a) is type(b)) for a, b in zip(native, read, strict=True))
    assert orjson.dumps(native) == orjson.dumps(read)
