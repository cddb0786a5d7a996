"""baton.schemas.event_fast against pydantic: for random and hostile run events the fast path
either declines or builds the very object pydantic validates (class, every field's value, type
and order, fields set, no extra, no private, its recorded text), and ``parse_event`` gives the
same event or the same refusal (kind and words) with it as without it."""

from __future__ import annotations

import json
import os
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from baton.processors.recorded import input_text
from baton.schemas.event_fast import fast_event, fast_spec
from baton.schemas.events import (
    _FAST,
    _FAST_SPECS,
    _NAME,
    _RUN_MODELS,
    MAX_TOOLS,
    RUN_EVENT_TYPES,
    EventError,
    Id,
    KillSwitch,
    Name,
    PolicyUpdated,
    parse_event,
)

pytestmark = pytest.mark.unit

#: examples per property (BATON_FAST_EXAMPLES=20 runs each twenty times as many: a long hunt)
_MORE = int(os.environ.get("BATON_FAST_EXAMPLES", "1"))

WHEN = "2026-03-01T09:00:00+00:00"
BASES: dict[str, dict[str, Any]] = {
    "handoff_requested": {
        "type": "handoff_requested",
        "request_id": "run-1/h1",
        "run_id": "run-1",
        "tenant": "default",
        "task_id": "plan",
        "parent_task_id": "root",
        "task_kind": "Plan",
        "from_agent": "orchestrator",
        "to_agent": "Planner",
        "action": "billing.refund.create",
        "tool": "search",
        "tools": ["search", "Browse"],
        "estimated_usd": 3.0,
        "estimated_tool_calls": 4,
        "decide_by": "2026-03-01T09:00:05.250000+00:00",
        "event_time": WHEN,
    },
    "handoff_completed": {
        "type": "handoff_completed",
        "request_id": "run-1/h1",
        "run_id": "run-1",
        "tenant": "default",
        "task_id": "plan",
        "agent": "planner",
        "cost_usd": 1.4611,
        "tool_calls": 8,
        "status": "ok",
        "steps": 2,
        "tools": ["search"],
        "event_time": WHEN,
    },
    "approval_granted": {
        "type": "approval_granted",
        "approval_id": "apr_1",
        "run_id": "run-1",
        "tenant": "acme",
        "approver": "finance_lead",
        "signature": "c2ln",
        "request_digest": "ab" * 32,
        "comment": "fine",
        "event_time": WHEN,
    },
    "approval_denied": {
        "type": "approval_denied",
        "approval_id": "apr_1",
        "run_id": "run-1",
        "approver": "alice",
        "comment": "",
        "event_time": WHEN,
    },
    "run_finished": {"type": "run_finished", "run_id": "run-1", "event_time": WHEN},
}
FIELDS = sorted({f for base in BASES.values() for f in base})

_texts = st.sampled_from(
    [
        "",
        " ",
        "a",
        "Ab",
        "a" * 256,
        "a" * 257,
        "A" * 256,
        "x" * 1024,
        "x" * 1025,
        "Ｃｏｄｅｒ",
        "cod\u200ber",
        "раура",
        "coder\u0301",
        "İstanbul",
        "ﷺ" * 20,
        "é" * 256,
        "e\u0301" * 200,
        "ab\x00",
        "\ud7ff",
        "null",
        "handoff_requested",
        "Handoff_Requested",
        WHEN,
        "2026-03-01T09:00:00Z",
        "2026-03-01T09:00:00",
        "2026-03-01 09:00:00+00:00",
        "2026-03-01T09:00:00.123456+00:00",
        "2026-03-01T09:00:00.1234567+00:00",
        "2026-03-01T09:00:00.12345+00:00",
        "2026-02-30T09:00:00+00:00",
        "2026-03-01T24:00:00+00:00",
        "1999-12-31T23:59:59+00:00",
        "2000-01-01T00:00:00+00:00",
        "2199-12-31T23:59:59.999999+00:00",
        "2200-01-01T00:00:00+00:00",
        "2026-03-01T09:00:00+05:30",
        "2026-03-01T09:00:00-00:00",
        "2026-03-01T09:00:00+00:00:00",
        "２０２６-03-01T09:00:00+00:00",
        "2026-03-01T09:00:00+00:00 ",
        "1772355600",
    ]
)
_numbers = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-2, max_value=1_000_002),
    st.sampled_from([0, 1, -1, 10**6, 10**6 + 1, 2**31 - 1, 2**53 + 1, 1772355600]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1.0, max_value=1_000_001.0),
    st.sampled_from([0.0, -0.0, 1e6, 1e6 + 0.01, 1e6 - 1e-9, 5e-324, -5e-324, 1e308, 3.0]),
)
_scalars = st.one_of(st.none(), _numbers, st.text(max_size=12), _texts)
_values = st.one_of(
    _scalars,
    st.lists(st.one_of(_texts, st.text(max_size=6), _numbers, st.none()), max_size=5),
    st.sampled_from([["a"] * 64, ["a"] * 65, [], ["x" * 300], [["nested"]], [{"a": 1}], {}]),
    st.dictionaries(st.text(max_size=5), _scalars, max_size=3),
)
#: ASCII names as the worker sees them: folded or not, with dots, dashes, digits
_ascii_names = st.text(alphabet="abcXYZ019._-:/@", min_size=1, max_size=20) | st.sampled_from(
    ["Default", "BILLING.Refund", "a" * 256, "9", "_", "-", "."]
)


@st.composite
def valid_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A run event of any type, its optional fields kept or dropped, values random but mostly
    valid, its keys in any order."""
    base = BASES[draw(st.sampled_from(sorted(BASES)))]
    doc: dict[str, Any] = {}
    keys = draw(st.permutations(sorted(base)))
    for key in keys:
        if key not in ("type", "event_time", "run_id") and draw(st.integers(0, 3)) == 0:
            continue
        value = base[key]
        if key in ("event_time", "decide_by"):  # as recorded, or as pydantic (the SDK) writes
            value = draw(st.sampled_from([value, value.replace("+00:00", "Z")]))
        elif isinstance(value, str) and key != "type":
            value = draw(_ascii_names | st.just(value))
        elif isinstance(value, float):
            value = draw(st.floats(0, 1e6) | st.integers(0, 10**6) | st.just(value))
        elif isinstance(value, int):
            value = draw(st.integers(0, 10**6) | st.just(value))
        elif isinstance(value, list):
            value = draw(st.lists(_ascii_names, max_size=MAX_TOOLS))
        doc[key] = value
    return doc


@st.composite
def hostile_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with fields set to hostile values, removed, nulled, or added."""
    doc = dict(draw(valid_docs()))
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["set", "set", "drop", "null", "extra", "type"]))
        if edit == "set":
            doc[draw(st.sampled_from(FIELDS))] = draw(_values)
        elif edit == "drop" and len(doc) > 1:
            doc.pop(draw(st.sampled_from(sorted(doc))))
        elif edit == "null":
            doc[draw(st.sampled_from(FIELDS))] = None
        elif edit == "extra":
            doc[draw(st.text(min_size=1, max_size=8) | st.sampled_from(FIELDS))] = draw(_values)
        else:
            doc["type"] = draw(st.sampled_from([*BASES, "Handoff_Requested", "kill_switch"]))
    return doc


def _pydantic(doc: dict[str, Any]) -> Any:
    try:
        return _RUN_MODELS[doc["type"]].validate_python(doc)
    except ValidationError as exc:
        return ("refused", str(exc))


def _assert_identical(fast: Any, slow: Any) -> None:
    """The same object, down to each value's type and the order of the fields."""
    assert not isinstance(slow, tuple), slow  # pydantic refused what the fast path built
    assert type(fast) is type(slow)
    assert repr(list(fast.__dict__.items())) == repr(list(slow.__dict__.items()))
    assert [type(v) for v in fast.__dict__.values()] == [type(v) for v in slow.__dict__.values()]
    for field, value in fast.__dict__.items():
        if isinstance(value, list):
            assert [type(x) for x in value] == [type(x) for x in slow.__dict__[field]]
            assert value is not slow.__dict__[field]
        if hasattr(value, "tzinfo"):
            assert value.tzinfo is slow.__dict__[field].tzinfo
    assert type(fast.model_fields_set) is set
    assert fast.model_fields_set == slow.model_fields_set
    for slot in ("__pydantic_extra__", "__pydantic_private__"):
        assert object.__getattribute__(fast, slot) == object.__getattribute__(slow, slot)
    assert fast == slow
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.to_json() == slow.to_json()
    assert input_text(fast) == input_text(slow)
    assert hash(type(fast)) and fast.model_copy() == slow  # (frozen: both refuse to change)
    with pytest.raises(ValidationError):
        fast.run_id = "other"  # type: ignore[misc]


def _check(doc: dict[str, Any]) -> bool:
    """Whether the fast path built ``doc`` from its JSON (else it declined); asserts it built
    it right. Its JSON as orjson writes it (UTF-8) and with every non-ASCII character escaped
    (``\\u``): the fast path builds neither when ``doc`` holds any, and the same for both."""
    kind = doc.get("type")
    if not isinstance(kind, str) or kind not in _FAST_SPECS:
        return False
    built = []
    for raw in (orjson.dumps(doc), json.dumps(doc).encode()):
        parsed = orjson.loads(raw)
        fast = fast_event(raw, parsed, _FAST_SPECS[kind])
        if fast is not None:
            _assert_identical(fast, _pydantic(parsed))
        built.append(fast)
    assert (built[0] is None) == (built[1] is None), built
    return built[0] is not None


@settings(max_examples=150 * _MORE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_docs())
def test_a_valid_event_is_built_as_pydantic_builds_it(doc: dict[str, Any]) -> None:
    _check(doc)


@settings(max_examples=300 * _MORE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_docs())
def test_a_hostile_event_is_declined_or_built_as_pydantic_builds_it(doc: dict[str, Any]) -> None:
    _check(doc)


def _parsed(raw: bytes, key: bytes | None) -> Any:
    try:
        return parse_event(raw, key)
    except EventError as exc:
        return ("refused", exc.kind, str(exc))


@settings(max_examples=200 * _MORE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_docs() | valid_docs(), st.sampled_from([None, b"run-1", b"run-2", b"\xff"]))
def test_parse_event_answers_the_same_with_the_fast_path_as_without(
    doc: dict[str, Any], key: bytes | None
) -> None:
    raw = json.dumps(doc).encode()
    fast = _parsed(raw, key)
    kept = dict(_FAST)
    _FAST.clear()
    try:
        slow = _parsed(raw, key)
        _FAST.update(_FAST_SPECS)  # on, whether or not this build turns it on
        fast = _parsed(raw, key)
    finally:
        _FAST.clear()
        _FAST.update(kept)
    if isinstance(fast, tuple) or isinstance(slow, tuple):
        assert fast == slow
    else:
        _assert_identical(fast, slow)


def test_the_common_events_take_the_fast_path() -> None:
    """Not a path that declines everything: each run event type's usual shapes are built."""
    assert sorted(_FAST_SPECS) == sorted(c.model_fields["type"].default for c in RUN_EVENT_TYPES)
    for doc in BASES.values():
        assert _check(doc), doc
        model = type(parse_event(orjson.dumps(doc)))
        required = {f for f, info in model.model_fields.items() if info.is_required()}
        assert _check({k: v for k, v in doc.items() if k in required | {"type"}})
    # as recorded (orjson's floats, the fields set only) and as a client may send it
    recorded = orjson.loads(input_text(parse_event(orjson.dumps(BASES["handoff_requested"]))))
    assert _check(recorded)
    # an unknown key is declined by the fast path and refused by pydantic's (session 27)
    assert not _check({**BASES["handoff_completed"], "cost_usd": 2, "extra": None})
    assert _check({**BASES["handoff_completed"], "cost_usd": 2})


@pytest.mark.parametrize(
    "when", ["2026-03-01T09:00:00Z", "2026-03-01T09:00:00.250000Z", "2199-12-31T23:59:59.999999Z"]
)
def test_an_event_as_the_sdk_sends_it_takes_the_fast_path(when: str) -> None:
    """pydantic writes a UTC time with "Z" (``HandoffRequested.to_json``: every event of
    Baton's SDK): the fast path builds it, as pydantic would, not only the recorded form."""
    for base in BASES.values():
        assert _check({**base, "event_time": when}), base
    sent = parse_event(orjson.dumps({**BASES["handoff_requested"], "event_time": when})).to_json()
    assert b'Z"' in sent
    assert _check(orjson.loads(sent))


@pytest.mark.parametrize(
    "doc",
    [
        {**BASES["handoff_completed"], "tool_calls": True},  # a bool is no count
        {**BASES["handoff_completed"], "tool_calls": 3.0},  # nor a float
        {**BASES["handoff_completed"], "cost_usd": True},
        {**BASES["handoff_completed"], "cost_usd": 1e6 + 0.01},
        {**BASES["handoff_completed"], "cost_usd": -1e-300},
        {**BASES["handoff_completed"], "steps": 10**6 + 1},
        {**BASES["handoff_completed"], "agent": "Ｃｏｄｅｒ"},  # a name NFKC folds
        {**BASES["handoff_completed"], "agent": "cod\u200ber"},  # refused by the fold
        {**BASES["handoff_completed"], "status": None},
        {**BASES["handoff_completed"], "event_time": "2026-03-01T09:00:00z"},
        {**BASES["handoff_completed"], "event_time": "2026-03-01T09:00:00.12345Z"},
        {**BASES["handoff_completed"], "event_time": "2026-03-01T09:00:00.1234567Z"},
        {**BASES["handoff_completed"], "event_time": "2026-03-01T24:00:00.000000Z"},
        {**BASES["handoff_completed"], "event_time": "1999-12-31T23:59:59+00:00"},
        {**BASES["handoff_requested"], "tools": ["a"] * 65},
        {**BASES["handoff_requested"], "tools": ["a", 1]},
        {**BASES["handoff_requested"], "request_id": "r" * 257},
        {**BASES["handoff_requested"], "task_id": ""},
        {k: v for k, v in BASES["handoff_requested"].items() if k != "to_agent"},
        {**BASES["approval_granted"], "comment": "x" * 1025},
        {**BASES["approval_granted"], "signature": "s" * 129},
    ],
)
def test_what_the_fast_path_is_not_sure_of_it_leaves_to_pydantic(doc: dict[str, Any]) -> None:
    assert _check(doc) is False


def test_a_model_of_any_other_shape_gets_no_fast_path() -> None:
    class _Checked(BaseModel):  # a validator of its own
        model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)
        _names = ("name",)
        _name_lists = ()
        run_id: Id
        name: Name

        @model_validator(mode="after")
        def _also(self) -> Any:
            return self

    assert fast_spec(_Checked, _NAME, MAX_TOOLS) is None
    assert fast_spec(KillSwitch, _NAME, MAX_TOOLS) is None  # model_post_init
    assert fast_spec(PolicyUpdated, _NAME, MAX_TOOLS) is None  # an unbounded str


_HOSTILE = [
    None,
    True,
    False,
    0,
    -1,
    1,
    10**6,
    10**6 + 1,
    2**63 - 1,
    -(2**63),
    0.0,
    -0.0,
    3.0,
    1e6,
    1e6 + 0.01,
    -5e-324,
    1e308,
    "",
    "a",
    "A",
    "a" * 256,
    "a" * 257,
    "x" * 1025,
    "Ｃｏｄｅｒ",
    "раура",
    "cod\u200ber",
    "a\tb",
    "ab\x00",
    "İ",
    WHEN,
    "2026-03-01T09:00:00Z",
    "2026-03-01T09:00:00.000001+00:00",
    "2026-03-01T09:00:00.00000+00:00",
    "1999-12-31T23:59:59+00:00",
    "2200-01-01T00:00:00+00:00",
    [],
    ["a"],
    ["A", "b"],
    ["a"] * 64,
    ["a"] * 65,
    ["a", None],
    ["a", 1],
    ["a", ""],
    ["Ｃｏｄｅｒ"],
    [["a"]],
    {},
    {"a": 1},
]


_RUN_MODELS_FIELDS = {c.model_fields["type"].default: list(c.model_fields) for c in RUN_EVENT_TYPES}


def _both(raw: bytes, key: bytes | None = None) -> tuple[Any, Any]:
    """parse_event's answer with the fast path off, and on."""
    kept = dict(_FAST)
    try:
        _FAST.clear()
        slow = _parsed(raw, key)
        _FAST.update(_FAST_SPECS)
        return slow, _parsed(raw, key)
    finally:
        _FAST.clear()
        _FAST.update(kept)


def _same_answer(raw: bytes) -> None:
    slow, fast = _both(raw)
    if isinstance(fast, tuple) or isinstance(slow, tuple):
        assert fast == slow, raw
    else:
        _assert_identical(fast, slow)


@pytest.mark.parametrize("kind", sorted(BASES))
def test_every_field_removed_nulled_or_retyped_answers_the_same(kind: str) -> None:
    base = BASES[kind]
    for field in [*_RUN_MODELS_FIELDS[kind], "extra"]:
        docs = [{k: v for k, v in base.items() if k != field}]
        docs += [{**base, field: value} for value in _HOSTILE]
        for doc in docs:
            _check(doc)
            for raw in (orjson.dumps(doc), json.dumps(doc).encode()):
                _same_answer(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"run_finished","run_id":"r","event_time":"%s","x":NaN}' % WHEN.encode(),
        b'{"type":"handoff_completed","request_id":"r","run_id":"r","task_id":"t","agent":"a",'
        b'"cost_usd":NaN,"event_time":"2026-03-01T09:00:00+00:00"}',
        b'{"type":"handoff_completed","request_id":"r","run_id":"r","task_id":"t","agent":"a",'
        b'"cost_usd":1e400,"event_time":"2026-03-01T09:00:00+00:00"}',
        b'{"type":"handoff_completed","request_id":"r","run_id":"r","task_id":"t","agent":"a",'
        b'"cost_usd":1e-400,"tool_calls":1E2,"event_time":"2026-03-01T09:00:00+00:00"}',
        b'{"type":"handoff_completed","request_id":"r","run_id":"r","task_id":"t","agent":"a",'
        b'"cost_usd":1000000.0000000001,"steps":-0,"event_time":"2026-03-01T09:00:00+00:00"}',
        b'{"type":"handoff_completed","request_id":"r","run_id":"r","task_id":"t","agent":"a",'
        b'"tool_calls":99999999999999999999,"event_time":"2026-03-01T09:00:00+00:00"}',
        b'{"type":"handoff_completed","request_id":"r","run_id":"r","task_id":"t","agent":"\\u0061",'
        b'"event_time":"2026-03-01T09:00:00+00:00"}',
        b'{"type":"handoff_completed","request_id":"r","run_id":"r","task_id":"t","agent":"A",'
        b'"agent":"b","event_time":"2026-03-01T09:00:00+00:00"}',
        b'{"type":"handoff_completed","request_id":"r","run_id":"r","task_id":"t","agent":"a",'
        b'"event_time":"2026-03-01T09:00:00+00:00","\xc3\xa9":{"deep":[[[[1]]]]}}',
        b'{"type":"handoff_requested","request_id":"r","run_id":"r","task_id":"t",'
        b'"from_agent":"a","to_agent":"b","tools":["x","X"],"decide_by":null,'
        b'"event_time":"2026-03-01T09:00:00+00:00"}',
    ],
)
def test_hand_written_json_answers_the_same(raw: bytes) -> None:
    _same_answer(raw)
