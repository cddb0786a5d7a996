"""The wire contract: good events parse, every kind of bad input is an EventError with its kind."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from baton.schemas.events import (
    MAX_COUNT,
    MAX_EVENT_BYTES,
    MAX_TEXT,
    MAX_USD,
    ApprovalDenied,
    ApprovalGranted,
    EventError,
    HandoffCompleted,
    HandoffRequested,
    KillSwitch,
    RunFinished,
    parse_control_event,
    parse_event,
)

pytestmark = pytest.mark.unit

WHEN = "2026-03-01T09:00:00Z"


def _requested(**fields: Any) -> dict[str, Any]:
    return {
        "type": "handoff_requested",
        "request_id": "req-1",
        "run_id": "run-1",
        "task_id": "refund_check",
        "from_agent": "planner",
        "to_agent": "billing_agent",
        "event_time": WHEN,
        **fields,
    }


def _completed(**fields: Any) -> dict[str, Any]:
    return {
        "type": "handoff_completed",
        "request_id": "req-1",
        "run_id": "run-1",
        "task_id": "refund_check",
        "agent": "billing_agent",
        "cost_usd": 0.42,
        "tool_calls": 3,
        "status": "ok",
        "event_time": WHEN,
        **fields,
    }


def _raw(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def _kind(raw: bytes, key: bytes | None = None) -> str:
    with pytest.raises(EventError) as info:
        parse_event(raw, key)
    return info.value.kind


# ------------------------------------------------------------------ good input


def test_handoff_request_parses_with_the_contract_names_and_defaults() -> None:
    event = parse_event(_raw(_requested(action="billing.refund.create")), b"run-1")
    assert isinstance(event, HandoffRequested)
    assert event.tenant == "default" and event.parent_task_id is None
    assert event.action == "billing.refund.create"
    assert event.kind == "refund_check"  # task_kind defaults to the task id


@pytest.mark.parametrize(
    ("doc", "cls"),
    [
        (_completed(), HandoffCompleted),
        ({"type": "approval_granted", "approval_id": "apr_1", "run_id": "run-1",
          "approver": "finance_lead", "signature": "sig", "event_time": WHEN}, ApprovalGranted),
        ({"type": "approval_denied", "approval_id": "apr_1", "run_id": "run-1",
          "approver": "finance_lead", "event_time": WHEN}, ApprovalDenied),
        ({"type": "run_finished", "run_id": "run-1", "event_time": WHEN}, RunFinished),
    ],
)  # fmt: skip
def test_every_run_event_type_parses(doc: dict[str, Any], cls: type) -> None:
    assert isinstance(parse_event(_raw(doc), b"run-1"), cls)


def test_an_unknown_field_is_refused_naming_it_never_dropped() -> None:
    # H1 (session 27): "actoin" dropped had the refund decided past the approval gate, and
    # "cost" dropped left the spend uncounted; both are a schema dead letter now
    for doc, words in [
        (
            _requested(actoin="billing.refund.create"),
            "unknown field 'actoin' (did you mean 'action'?)",
        ),
        (_completed(cost=12.5), "unknown field 'cost' (did you mean 'cost_usd'?)"),
        (_requested(priority="high", depth=1), "unknown fields 'priority', 'depth'"),
    ]:
        with pytest.raises(EventError, match=re.escape(words)) as info:
            parse_event(_raw(doc))
        assert info.value.kind == "schema"
        assert "refuses a field it does not know" in str(info.value)
    with pytest.raises(ValidationError, match="actoin"):  # the SDK's constructors too
        HandoffRequested(**{**_requested(), "actoin": "x"})


def test_an_unknown_key_is_shown_short_and_escaped() -> None:
    doc = _completed(**{"k" * 5000: 1, "\x1b[31mred": 2, "a": 3, "b": 4})
    with pytest.raises(EventError) as info:
        parse_event(_raw(doc))
    text = str(info.value)
    assert len(text) < 600 and "\x1b" not in text  # no raw escape reaches a terminal
    assert "'\\x1b[31mred'" in text and "'" + "k" * 64 + "'..." in text
    assert "and 1 more" in text


def test_event_round_trips_through_its_json() -> None:
    event = parse_event(_raw(_completed()))
    assert parse_event(event.to_json()) == event


def test_kill_switch_parses_on_the_control_path() -> None:
    raw = _raw({"type": "kill_switch", "scope": "tenant", "tenant": "acme", "operator": "oncall",
                "event_time": WHEN})  # fmt: skip
    event = parse_control_event(raw)
    assert isinstance(event, KillSwitch) and event.target == "acme"


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "raw", [b"not json", b"{", b"", b"\xff\xfe{}", b'{"type": "handoff_requested",}']
)
def test_bytes_that_are_not_json_are_not_json(raw: bytes) -> None:
    assert _kind(raw) == "not_json"


def test_nan_cost_is_refused_and_named() -> None:
    raw = _raw(_completed()).replace(b"0.42", b"NaN")
    with pytest.raises(EventError) as info:
        parse_event(raw)
    assert info.value.kind == "not_json"
    assert "NaN" in str(info.value)


def test_infinite_cost_is_refused() -> None:
    assert _kind(_raw(_completed()).replace(b"0.42", b"Infinity")) == "not_json"
    assert _kind(_raw(_completed()).replace(b"0.42", b"1e999")) == "out_of_range"
    assert _kind(_raw(_completed(cost_usd="NaN"))) == "schema"


def test_negative_cost_is_out_of_range_naming_the_field() -> None:
    with pytest.raises(EventError) as info:
        parse_event(_raw(_completed(cost_usd=-0.01)))
    assert info.value.kind == "out_of_range"
    assert "cost_usd" in str(info.value)


def test_negative_tool_calls_and_estimates_are_out_of_range() -> None:
    assert _kind(_raw(_completed(tool_calls=-1))) == "out_of_range"
    assert _kind(_raw(_requested(estimated_usd=-5))) == "out_of_range"


@pytest.mark.parametrize(
    "raw",
    [
        _raw(_completed(cost_usd=1e308)),
        _raw(_completed(cost_usd=MAX_USD * 1.0001)),
        _raw(_completed(tool_calls=2**63 - 1)),
        _raw(_completed(tool_calls=MAX_COUNT + 1)),
        _raw(_completed()).replace(b'"tool_calls":3', b'"tool_calls":' + b"9" * 40),
        _raw(_requested(estimated_tool_calls=2**40)),
        _raw(_requested(event_time="9999-12-31T23:59:59Z")),
        _raw(_requested(event_time="1971-01-01T00:00:00Z")),
        _raw(_requested(event_time="0001-01-01T00:00:00")),
        _raw(_requested(run_id="r" * 300)),
        _raw(_requested(to_agent="a" * 60_000)),
        _raw(_completed(status="s" * 257)),
        _raw(
            {
                **{k: v for k, v in _completed().items() if k in ApprovalDenied.model_fields},
                "type": "approval_denied",
                "approval_id": "a",
                "approver": "b",
                "comment": "c" * (MAX_TEXT + 1),
            }
        ),
    ],
)
def test_numbers_times_and_text_beyond_what_baton_holds_exactly_are_out_of_range(
    raw: bytes,
) -> None:
    assert _kind(raw) == "out_of_range"


@pytest.mark.parametrize(
    "raw",
    [
        _raw(_completed(cost_usd=True)),
        _raw(_completed(tool_calls="12")),
        _raw(_completed(tool_calls=3.0)),
        _raw(_completed(tool_calls=True)),
    ],
)
def test_numbers_must_be_json_numbers_of_their_kind(raw: bytes) -> None:
    # no lax coercion: true is not one dollar, "12" is not twelve tool calls
    assert _kind(raw) == "schema"


def test_the_largest_accepted_values_parse() -> None:
    done = parse_event(_raw(_completed(cost_usd=MAX_USD, tool_calls=MAX_COUNT)))
    assert done.cost_usd == MAX_USD and done.tool_calls == MAX_COUNT


def test_an_event_time_without_a_zone_is_taken_as_utc() -> None:
    event = parse_event(_raw(_requested(event_time="2026-11-25T10:00:00")))
    assert event.event_time.tzinfo is not None
    assert event.event_time.utcoffset() == timedelta(0)


@pytest.mark.parametrize("type_", ["handoff_approved", "kill_switch", "policy_updated", ""])
def test_unknown_or_control_type_on_the_run_path_is_unknown_type(type_: str) -> None:
    assert _kind(_raw(_requested(type=type_))) == "unknown_type"


@pytest.mark.parametrize(
    "raw",
    [
        b"[1, 2]",
        b'"handoff_requested"',
        b'{"run_id": "run-1"}',  # no type
        b'{"type": 7}',
        _raw({k: v for k, v in _requested().items() if k != "to_agent"}),
        _raw(_requested(request_id="")),
        _raw(_requested(event_time="yesterday")),
    ],
)
def test_wrong_shape_is_a_schema_error(raw: bytes) -> None:
    assert _kind(raw) == "schema"


def test_schema_error_names_the_missing_field() -> None:
    with pytest.raises(EventError, match="to_agent"):
        parse_event(_raw({k: v for k, v in _requested().items() if k != "to_agent"}))


def test_oversized_event_is_refused_before_parsing() -> None:
    raw = _raw(_requested(note="x" * MAX_EVENT_BYTES))
    assert _kind(raw) == "oversized"


def test_kafka_key_must_be_the_payload_run_id() -> None:
    with pytest.raises(EventError) as info:
        parse_event(_raw(_requested()), b"run-2")
    assert info.value.kind == "key_mismatch"
    assert "run-2" in str(info.value) and "run-1" in str(info.value)


def test_kill_switch_for_a_run_needs_the_run_id() -> None:
    raw = _raw({"type": "kill_switch", "scope": "run", "operator": "oncall", "event_time": WHEN})
    with pytest.raises(EventError) as info:
        parse_control_event(raw)
    assert info.value.kind == "schema"
