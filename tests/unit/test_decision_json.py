"""``Decision.to_json`` writes every field in DECISION_FIELDS order, as orjson writes the
dataclass, in both builds: compiled it goes through a dict written out field by field
(schemas/decision.py), which must name every field, in order, each as itself."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path

import orjson
import pytest

import baton.schemas.decision as decision_module
from baton.schemas.decision import DECISION_FIELDS, Decision, Fallback, Outcome, Phase

pytestmark = pytest.mark.unit

_values = attrgetter(*DECISION_FIELDS)


def _display_keys_and_values() -> list[tuple[str, str]]:
    """(key, attribute) of the dict literal in ``Decision.to_json``'s source."""
    source = Path(decision_module.__file__).with_suffix(".py")
    if not source.exists():  # a compiled build: its source next to the tree's
        source = Path(__file__).parents[2] / "schemas" / "decision.py"
    tree = ast.parse(source.read_text())
    (method,) = [
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "to_json"
    ]
    (display,) = [n for n in ast.walk(method) if isinstance(n, ast.Dict)]
    pairs = []
    for key, value in zip(display.keys, display.values, strict=True):
        assert isinstance(key, ast.Constant) and isinstance(value, ast.Attribute)
        pairs.append((key.value, value.attr))
    return pairs


def test_the_written_out_record_names_every_field_in_order_each_as_itself() -> None:
    pairs = _display_keys_and_values()
    assert [k for k, _ in pairs] == list(DECISION_FIELDS)
    assert all(k == attr for k, attr in pairs)


def _decisions() -> list[Decision]:
    now = datetime(2026, 12, 1, 21, 47, 23, 308622, tzinfo=UTC)
    full = Decision(
        *[f'{f}-x\u00e9",' for f in DECISION_FIELDS[:3]],
        "acme",
        Phase.APPROVAL,
        Outcome.APPROVAL_REQUIRED,
        "approval_pending",
        "owner",
        "from",
        "to",
        "task",
        "parent",
        "act",
        3,
        7,
        12.5,
        9,
        "error",
        Fallback.CONSTRAINED,
        "apr",
        now + timedelta(minutes=5),
        "approver",
        "0123456789abcdef",
        now,
        now.replace(microsecond=0),
        "worker",
        5,
        2**40,
        Outcome.STOP,
        "tool",
        0.25,
        "detail \n",
        "digest",
        "a" * 32,
        "b" * 32,
        '{"type":"handoff_requested"}',
        True,
    )
    bare = Decision("d", "r", "run", "default", Phase.PRE_HANDOFF, Outcome.ALLOW, "ok")
    return [full, bare]


@pytest.mark.parametrize("d", _decisions())
def test_to_json_is_every_field_in_order_as_orjson_writes_it(d: Decision) -> None:
    expected = orjson.dumps(dict(zip(DECISION_FIELDS, _values(d), strict=True)))
    assert d.to_json() == expected
    assert list(orjson.loads(d.to_json())) == list(DECISION_FIELDS)
    assert Decision.from_json(d.to_json()) == d
