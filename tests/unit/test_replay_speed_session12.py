"""`baton replay`'s speed work of the twelfth session (issue 14 item 1): what each change keeps.

Compiled with mypyc, a dataclass's ``__init__`` is still the interpreted one dataclasses
writes, so ``DecisionContext`` (made for every engine call) writes its own: it must take the
fields in the same order with the same defaults. (Not ``Decision``: the engine makes it with
``Decision.__new__`` and sets its slots, which a compiled ``__init__`` would refuse.)
The chain link reads a compiled decision's fields natively (``decision_content``, since
session 18; ``chain._values`` before): the same bytes as ``chain_content(chain_values(d))``.
A page's rows are checked one value at a time (``replay_source._plain``) before the tuple
of their types: it must accept only what the columns allow, so a forged row still meets
``_shape_checked``.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from baton.processors.decision_builder import DecisionContext, Origin
from baton.processors.policy_rules import rules_for
from baton.processors.recorded import REPLAY_COLUMNS
from baton.schemas.decision import (
    CHAIN_FIELDS,
    Decision,
    Fallback,
    Outcome,
    Phase,
    chain_content,
    chain_values,
    decision_content,
)
from baton.schemas.errors import AuditUnavailable
from baton.schemas.policy import load_policy
from baton.sinks import replay_source
from baton.sinks.replay_source import page_rows

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 30, 19, 0, tzinfo=UTC)


def test_the_written_out_init_takes_the_fields_in_order_with_their_defaults() -> None:
    # (by calls, not inspect.signature: a compiled __init__ has none; == : a float is unboxed)
    fields = dataclasses.fields(DecisionContext)
    rules = rules_for(load_policy(None), "default")
    values = [rules, NOW, 1.5, object(), Origin("w", 1, 2), "request", "digest"]
    assert len(values) == len(fields)
    by_place = DecisionContext(*values)
    by_name = DecisionContext(**{f.name: v for f, v in zip(fields, values, strict=True)})
    for field, value in zip(fields, values, strict=True):
        assert getattr(by_place, field.name) == value, field.name
        assert getattr(by_name, field.name) == value, field.name
    required = [f for f in fields if f.default is dataclasses.MISSING]
    least = DecisionContext(*values[: len(required)])
    for field in fields[len(required) :]:
        assert getattr(least, field.name) == field.default, field.name
    with pytest.raises(TypeError):
        DecisionContext(*values[: len(required) - 1])


def _every_field_set() -> Decision:
    values: dict[str, Any] = {}
    for i, name in enumerate(f.name for f in dataclasses.fields(Decision)):
        values[name] = f"v{i}"
    values.update(
        phase=Phase.PRE_HANDOFF, outcome=Outcome.STOP, depth=2, handoff_count=3, spent_usd=1.5,
        tool_calls=4, fallback=Fallback.SINGLE_AGENT, approval_expires_at=NOW,
        event_time=NOW, decided_at=NOW, partition=1, offset=7, shadow_outcome=Outcome.STOP,
        reserved_usd=0.25, reemitted=True,
    )  # fmt: skip
    return Decision(**values)


def test_the_chain_reads_the_fields_chain_values_reads() -> None:
    d = _every_field_set()
    assert decision_content(d, d.input) == chain_content(chain_values(d))
    values = list(chain_values(d))
    values[CHAIN_FIELDS.index("input")] = "other input"
    assert decision_content(d, "other input") == chain_content(values)
    assert decision_content(d, "other input") != decision_content(d, d.input)


_GOOD_ROW: list[Any] = [
    "run", "id", "allow", "within_budget", None, "v1", int(NOW.timestamp()) * 1_000_000, "w", 0, 5,
    '{"type":"x"}', "", "h",
]  # fmt: skip
_VALUES: list[Any] = ["x", None, 1, -1, True, 1.5, [], {}, "12"]


def test_a_row_passes_the_one_value_checks_only_with_types_its_columns_allow() -> None:
    assert replay_source._plain(list(_GOOD_ROW))
    for i, name in enumerate(REPLAY_COLUMNS):
        for value in _VALUES:
            row = list(_GOOD_ROW)
            row[i] = value
            if replay_source._plain(row):
                assert type(value) in replay_source._COLUMN_TYPES[name], (name, value)
    assert not replay_source._plain(_GOOD_ROW[:-1])
    assert not replay_source._plain(tuple(_GOOD_ROW))


def test_a_forged_row_is_still_refused_by_name_and_a_quoted_one_still_read() -> None:
    forged = list(_GOOD_ROW)
    forged[REPLAY_COLUMNS.index("outcome")] = 7
    with pytest.raises(AuditUnavailable, match="outcome is '7'"):
        list(page_rows(orjson.dumps(forged) + b"\n"))
    quoted = list(_GOOD_ROW)
    quoted[REPLAY_COLUMNS.index("decided_at")] = str(int(NOW.timestamp()) * 1_000_000 + 1)
    quoted[REPLAY_COLUMNS.index("offset")] = "5"
    (row,) = page_rows(orjson.dumps(quoted) + b"\n")
    assert row.decided_at == datetime(2026, 11, 30, 19, 0, 0, 1, tzinfo=UTC)
    assert row.offset == 5
    (plain,) = page_rows(orjson.dumps(_GOOD_ROW) + b"\n")
    assert plain.decided_at == NOW and plain.offset == 5
    too_far = list(_GOOD_ROW)
    too_far[REPLAY_COLUMNS.index("decided_at")] = 2**62
    with pytest.raises(AuditUnavailable, match="decided_at"):
        list(page_rows(orjson.dumps(too_far) + b"\n"))


@pytest.mark.parametrize("row", [5, "x", None, {"a": 1}, [1] * 13, _GOOD_ROW[:-1]])
def test_a_row_that_is_no_list_of_the_columns_is_refused_by_name(row: Any) -> None:
    with pytest.raises(AuditUnavailable, match="not a row of"):
        list(page_rows(orjson.dumps(row) + b"\n"))
