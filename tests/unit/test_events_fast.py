"""parse_event validates a run event by its type's model, not the union: the same event or the
same refusal as the union gives, for any input (hostile ones above all)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from baton.schemas.events import _RUN_EVENT, _RUN_MODELS, EventError, _parse, parse_event

pytestmark = pytest.mark.unit

WHEN = "2026-03-01T09:00:00+00:00"
#: one valid event of each run event type: the starting points the hostile edits change
BASES: dict[str, dict[str, Any]] = {
    "handoff_requested": {
        "type": "handoff_requested",
        "request_id": "r-1",
        "run_id": "run-1",
        "task_id": "t1",
        "from_agent": "planner",
        "to_agent": "coder",
        "estimated_usd": 3.0,
        "tools": ["search"],
        "event_time": WHEN,
    },
    "handoff_completed": {
        "type": "handoff_completed",
        "request_id": "r-1",
        "run_id": "run-1",
        "task_id": "t1",
        "agent": "coder",
        "cost_usd": 1.25,
        "tool_calls": 3,
        "event_time": WHEN,
    },
    "approval_granted": {
        "type": "approval_granted",
        "approval_id": "a-1",
        "run_id": "run-1",
        "approver": "alice",
        "event_time": WHEN,
    },
    "approval_denied": {
        "type": "approval_denied",
        "approval_id": "a-1",
        "run_id": "run-1",
        "approver": "alice",
        "comment": "no",
        "event_time": WHEN,
    },
    "run_finished": {"type": "run_finished", "run_id": "run-1", "event_time": WHEN},
}
FIELDS = sorted({f for base in BASES.values() for f in base} | {"tenant", "steps", "decide_by"})

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, -1, 10**6, 10**6 + 1, 2**31, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e6, 1e6 + 0.01, 1e308, -1e-300, 5e-324]),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "x" * 60_000,
            "a" * 257,
            "Ｃｏｄｅｒ",
            "cod\u200ber",
            "раура",
            "İ",
            "run-2",
            WHEN,
            "2026-03-01T09:00:00Z",
            "2026-03-01T09:00:00",
            "2026-03-01T09:00:00.123456789+00:00",
            "2026-02-30T09:00:00Z",
            "1999-12-31T23:59:59Z",
            "2200-01-01T00:00:00Z",
            "2026-03-01T09:00:00+05:30",
            "1772355600",
            "handoff_requested",
        ]
    ),
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=4),
    st.sampled_from([["a"] * 65, ["x" * 300], [["nested"]]]),
    st.dictionaries(st.text(max_size=5), _scalars, max_size=3),
)


@st.composite
def hostile_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid run event with fields set to hostile values, removed, or added."""
    doc = dict(BASES[draw(st.sampled_from(sorted(BASES)))])
    for _ in range(draw(st.integers(0, 4))):
        edit = draw(st.sampled_from(["set", "drop", "extra", "type"]))
        if edit == "set":
            doc[draw(st.sampled_from(FIELDS))] = draw(_values)
        elif edit == "drop" and len(doc) > 1:
            doc.pop(draw(st.sampled_from(sorted(doc))))
        elif edit == "extra":
            doc[draw(st.text(min_size=1, max_size=8))] = draw(_values)
        else:
            doc["type"] = draw(st.sampled_from([*BASES, "kill_switch", "Handoff_Requested", 7]))
    return doc


def _union(doc: dict[str, Any]) -> Any:
    try:
        return _RUN_EVENT.validate_python(doc)
    except ValidationError as exc:
        return ("refused", str(exc))


def _by_model(doc: dict[str, Any]) -> Any:
    try:
        return _RUN_MODELS[doc["type"]].validate_python(doc)
    except ValidationError as exc:
        return ("refused", str(exc))


def _parsed(raw: bytes, key: bytes | None, models: Any) -> Any:
    try:
        if models is None:  # the union alone, as parse_event was
            event = _parse(raw, _RUN_EVENT, key)
            if key is not None and key != event.run_id.encode():
                raise EventError("key_mismatch", "")
            return event
        return parse_event(raw, key)
    except EventError as exc:
        return ("refused", exc.kind, str(exc) if exc.kind != "key_mismatch" else "")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        return a == b
    # the same class, every field equal, and the same fields set (exclude_unset dumps)
    return type(a) is type(b) and a == b and a.model_fields_set == b.model_fields_set


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_docs())
def test_a_type_s_model_accepts_what_the_union_accepts_and_gives_the_same_event(
    doc: dict[str, Any],
) -> None:
    union = _union(doc)
    kind = doc.get("type")
    if isinstance(kind, str) and kind in _RUN_MODELS:  # (parse_event checks it is a string)
        model = _by_model(doc)
        if not isinstance(model, tuple):  # accepted by the model: the union's own event
            assert _same(model, union), (doc, model, union)
        else:  # refused by the model: refused by the union too (then its error is shown)
            assert isinstance(union, tuple), (doc, union)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_docs(), st.sampled_from([None, b"run-1", b"run-2", b"\xff"]))
def test_parse_event_gives_the_same_event_or_the_same_refusal_as_the_union_alone(
    doc: dict[str, Any], key: bytes | None
) -> None:
    raw = json.dumps(doc).encode()  # (orjson refuses integers past 64 bits; a sender may not)
    assert _same(_parsed(raw, key, "models"), _parsed(raw, key, None))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | st.sampled_from([b"[]", b"{}", b'{"type":1}', b"1e400"]))
def test_bytes_that_are_no_event_are_refused_alike(raw: bytes) -> None:
    assert _same(_parsed(raw, None, "models"), _parsed(raw, None, None))


def test_a_hostile_field_is_refused_with_the_union_s_own_words() -> None:
    # the model refuses, the union validates again: its location has no union tag in front
    doc = {**BASES["handoff_completed"], "cost_usd": 1e7}
    with pytest.raises(EventError) as refused:
        parse_event(orjson.dumps(doc), b"run-1")
    assert refused.value.kind == "out_of_range"
    assert str(refused.value).startswith("handoff_completed: cost_usd: ")
