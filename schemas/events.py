"""The wire contract of every event Baton consumes: pydantic v2 models, JSON with a ``type`` field.

Field names are a public contract that orchestrators in other languages code against:
add optional fields freely, rename only with a version bump. Unknown fields are ignored so
that newer clients keep working against an older Baton.
"""

from __future__ import annotations

from datetime import datetime
from types import FunctionType, UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WrapValidator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from baton.schemas.event_errors import refusal
from baton.schemas.event_fast import fast_event, fast_parse, fast_spec
from baton.schemas.event_times import event_time_from
from baton.schemas.json_numbers import overflowing_number
from baton.schemas.names import MAX_NAME, EventNameRefused, fold_event_names

__all__ = [
    "FAST_KINDS",
    "MAX_EVENT_BYTES",
    "ApprovalDenied",
    "ApprovalEvent",
    "ApprovalGranted",
    "ControlEvent",
    "Event",
    "EventError",
    "HandoffCompleted",
    "HandoffRequested",
    "KillSwitch",
    "KillSwitchReleased",
    "PolicyUpdated",
    "RunEvent",
    "RunFinished",
    "parse_control_event",
    "parse_event",
]

#: Largest accepted event, in bytes. A handoff request is a few hundred bytes; anything near
#: this limit is a bug or an attack, and would bloat the run's state and the audit.
MAX_EVENT_BYTES = 64 * 1024
#: The longest command text a worker records in the audit (it dead-letters an event past
#: MAX_EVENT_BYTES; its recorded input stays within twice that): a longer control row is no
#: worker's, and the restart reads it as none or as its size, never a forger's megabytes.
MAX_RECORDED_COMMAND_BYTES = 2 * MAX_EVENT_BYTES

#: Bounds every number and time must hold: the engine keeps money in floats and the audit in
#: Decimal(18, 6), UInt32 and DateTime64(6). 1e6 USD per report keeps a run's spend exact to the
#: micro-dollar for thousands of reports (a float holds 2**53 micro-dollars exactly, ~9e9 USD);
#: the engine saturates a run's totals at MAX_RUN_USD / MAX_RUN_COUNT (never wraps, never
#: overflows the audit columns). A value outside these is an ``out_of_range`` dead letter.
MAX_USD = 1_000_000.0
MAX_COUNT = 1_000_000
MAX_RUN_USD = 1_000_000_000.0
MAX_RUN_COUNT = 2**31 - 1
#: free text (comments, kill reasons, statuses' details) is capped: it is copied into
#: decisions, kept in run state for retries, and written to the audit
MAX_TEXT = 1024


def _name_shape(annotation: Any, metadata: list[Any]) -> str | None:
    """What a field of this type and metadata holds: "name" (``Name``, ``Name | None``),
    "list" (a list of names: ``Tools``) or neither (None)."""
    if any(m is _NAME for m in metadata):
        return "name"
    if get_origin(annotation) is Annotated:
        inner, *more = get_args(annotation)
        return _name_shape(inner, more)
    if get_origin(annotation) is list:
        return "list" if _name_shape(get_args(annotation)[0], []) == "name" else None
    if get_origin(annotation) in (Union, UnionType):
        shapes = {_name_shape(arg, []) for arg in get_args(annotation)} - {None}
        return shapes.pop() if len(shapes) == 1 else None
    return None


Id = Annotated[str, Field(min_length=1, max_length=256)]


class _NameMark:
    """Marks a field type as a name: ``_Event`` checks and folds every field it marks."""


_NAME = _NameMark()
#: agents, tools, actions, task kinds, statuses, tenants, approvers, operators: checked and
#: folded, all names of an event in one pass before its fields are validated (``_Event``), to
#: the one form the policy's keys and globs are folded to (baton.schemas.names)
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME), _NAME]
Money = Annotated[float, Field(ge=0, le=MAX_USD, allow_inf_nan=False, strict=True)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
#: base64 of a 64-byte Ed25519 signature is 88 characters; a little room, no more
Signature = Annotated[str, Field(min_length=1, max_length=128)]
Digest = Annotated[str, Field(min_length=1, max_length=128)]
EventTime = Annotated[datetime, WrapValidator(event_time_from)]
#: tools a handoff declares or a completion reports: a handful in practice, bounded here
#: because they are copied into run state and checked one by one
MAX_TOOLS = 64
Tools = Annotated[list[Name], Field(max_length=MAX_TOOLS)]


class _Event(BaseModel):
    # an unknown key is refused, never dropped: a misspelt "actoin" would have the handoff
    # decided without its action (past the approval gate), a misspelt "cost" uncounted
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    #: the fields holding a name, and those holding a list of names (``_NAME``), per class
    _names: ClassVar[tuple[str, ...]] = ()
    _name_lists: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        shapes = {
            f: _name_shape(info.annotation, info.metadata) for f, info in cls.model_fields.items()
        }
        cls._names = tuple(f for f, shape in shapes.items() if shape == "name")
        cls._name_lists = tuple(f for f, shape in shapes.items() if shape == "list")

    @model_validator(mode="before")
    @classmethod
    def _fold_names(cls, data: Any) -> Any:
        """Every name of the event checked and folded in one pass: the first bad one, or the
        event's non-ASCII names past their budget, is the event's one error (named by its
        field), so a record of many hostile names costs one refusal, not one per name."""
        if type(data) is not dict:
            return data
        try:
            return fold_event_names(data, cls._names, cls._name_lists, MAX_TOOLS)
        except EventNameRefused as exc:
            error = PydanticCustomError(
                "value_error", "Value error, {reason}", {"reason": str(exc)}
            )
            detail = InitErrorDetails(type=error, loc=exc.loc, input=exc.name)
            raise ValidationError.from_exception_data(cls.__name__, [detail]) from None

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))


class HandoffRequested(_Event):
    """Published *before* ``from_agent`` delegates ``task_id`` to ``to_agent``."""

    type: Literal["handoff_requested"] = "handoff_requested"
    request_id: Id
    run_id: Id
    tenant: Name = "default"
    task_id: Id
    parent_task_id: Id | None = None
    task_kind: Name | None = Field(
        default=None, description="Kind of task for the role map; defaults to task_id."
    )
    from_agent: Name
    to_agent: Name
    action: Name | None = Field(default=None, description='e.g. "billing.refund.create"')
    tool: Name | None = None
    tools: Tools | None = Field(
        default=None,
        description="the tools the receiving agent will use (at most 64): each is checked "
        "against tools and roles.<to_agent>.tools (tool_not_permitted) and against "
        "require_approval_for",
    )
    estimated_usd: Money | None = Field(
        default=None, description="Reserved against the shared budget until the completion."
    )
    estimated_tool_calls: Count | None = None
    decide_by: EventTime | None = Field(
        default=None,
        description="when the client stops waiting for the decision (the SDK sets it): a "
        "request the worker reads later is stopped (request_expired), never allowed late",
    )
    event_time: EventTime

    @property
    def kind(self) -> str:
        return self.task_kind or self.task_id


class HandoffCompleted(_Event):
    """Published *after* the delegated work, with what it cost; consumes the run's shared budget."""

    type: Literal["handoff_completed"] = "handoff_completed"
    request_id: Id = Field(description="request_id of the handoff this completes")
    run_id: Id
    tenant: Name = "default"
    task_id: Id
    agent: Name
    cost_usd: Money = 0.0
    tool_calls: Count = 0
    status: Name = Field(
        default="ok",
        description="a status in the policy's release_ownership_on (default error, cancelled) "
        "frees the task for another agent",
    )
    steps: Count = Field(
        default=0, description="steps the agent took; counted against the run's max_steps"
    )
    tools: Tools | None = Field(
        default=None,
        description="the tools the agent used (at most 64): one the policy does not permit "
        "the agent stops the run (tool_not_permitted)",
    )
    event_time: EventTime


class ApprovalGranted(_Event):
    type: Literal["approval_granted"] = "approval_granted"
    approval_id: Id
    run_id: Id
    tenant: Name = "default"
    approver: Name
    signature: Signature | None = Field(
        default=None,
        description="Ed25519 signature of the approver over baton.schemas.signing."
        "approval_payload (approval id, run, request digest, verdict, approver, event_time); "
        "required when the policy lists approval.keys",
    )
    request_digest: Digest | None = Field(
        default=None, description="digest of the handoff request this answers (signed)"
    )
    comment: Text | None = None
    event_time: EventTime


class ApprovalDenied(_Event):
    type: Literal["approval_denied"] = "approval_denied"
    approval_id: Id
    run_id: Id
    tenant: Name = "default"
    approver: Name
    signature: Signature | None = None
    request_digest: Digest | None = None
    comment: Text | None = None
    event_time: EventTime


class RunFinished(_Event):
    """The orchestrator is done with the run; its state may be evicted after the retention."""

    type: Literal["run_finished"] = "run_finished"
    run_id: Id
    tenant: Name = "default"
    event_time: EventTime


class _KillScope(_Event):
    """What a kill switch and its release share: a scope, its target, who and why, signed."""

    type: Literal["kill_switch", "kill_switch_released"]
    scope: Literal["run", "tenant", "global"]
    run_id: Id | None = None
    tenant: Name | None = None
    operator: Name
    reason: Text = ""
    signature: Signature | None = Field(
        default=None,
        description="Ed25519 signature of the operator over baton.schemas.signing."
        "control_payload; required when the policy lists operators",
    )
    event_time: EventTime

    def model_post_init(self, __context: Any) -> None:
        if self.scope == "run" and not self.run_id:
            raise ValueError("scope 'run' needs run_id")
        if self.scope == "tenant" and not self.tenant:
            raise ValueError("scope 'tenant' needs tenant")

    @property
    def target(self) -> str:
        return {"run": self.run_id, "tenant": self.tenant, "global": "*"}[self.scope] or "*"


class KillSwitch(_KillScope):
    """An operator stops every handoff of a run, a tenant, or everything (``scope="global"``)."""

    type: Literal["kill_switch"] = "kill_switch"


class KillSwitchReleased(_KillScope):
    """An operator lifts a kill switch of the same scope and target."""

    type: Literal["kill_switch_released"] = "kill_switch_released"


class PolicyUpdated(_Event):
    """A new policy for every worker, published on the control topic (hot reload)."""

    type: Literal["policy_updated"] = "policy_updated"
    policy_yaml: str
    operator: Name = "unknown"
    #: SHA-256 (hex) of policy_yaml, signed with it: the audit names the policy by it
    policy_sha: Digest | None = None
    signature: Signature | None = None
    event_time: EventTime


RunEvent = HandoffRequested | HandoffCompleted | ApprovalGranted | ApprovalDenied | RunFinished
ApprovalEvent = ApprovalGranted | ApprovalDenied
ControlEvent = KillSwitch | KillSwitchReleased | PolicyUpdated
Event = RunEvent | ControlEvent

_RUN_EVENT = TypeAdapter(Annotated[RunEvent, Field(discriminator="type")])
_CONTROL_EVENT = TypeAdapter(Annotated[ControlEvent, Field(discriminator="type")])

RUN_EVENT_TYPES: tuple[type[_Event], ...] = (
    HandoffRequested,
    HandoffCompleted,
    ApprovalGranted,
    ApprovalDenied,
    RunFinished,
)
CONTROL_EVENT_TYPES: tuple[type[_Event], ...] = (KillSwitch, KillSwitchReleased, PolicyUpdated)
#: a run event's type -> its model's validator, the schema the union's tag picks, without the
#: union's dispatch and TypeAdapter's wrapper (~0.4 us of ~4.5 a parse); a refusal is worded
#: as the union's (its field names without the tag), validated once
_RUN_MODELS = {c.model_fields["type"].default: c.__pydantic_validator__ for c in RUN_EVENT_TYPES}
#: an event's type -> its fields, what a key it does not know was meant to be
_FIELDS_OF = {
    c.model_fields["type"].default: tuple(c.model_fields)
    for c in (*RUN_EVENT_TYPES, *CONTROL_EVENT_TYPES)
}
#: a run event's type -> how baton.schemas.event_fast builds it without pydantic's per-field
#: validation, for every model whose fields it reproduces exactly (each run event's today)
_FAST_SPECS = {
    c.model_fields["type"].default: spec
    for c in RUN_EVENT_TYPES
    if (spec := fast_spec(c, _NAME, MAX_TOOLS)) is not None
}
#: the ones parse_event uses: all where event_fast is compiled (the compiled core, docs/replay.md),
#: none where it is Python: there its loop costs more than pydantic's own (Rust) validation
_FAST = dict(_FAST_SPECS) if not isinstance(fast_event, FunctionType) else {}
#: the same map, for a compiled caller of ``fast_parse`` (processors/replay.py reads every
#: recorded input through it, parse_event only where it declines)
FAST_KINDS = _FAST


class EventError(ValueError):
    """An input event is unusable; ``kind`` is a stable short code for the dead-letter record."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


def _parse(raw: bytes, adapter: TypeAdapter[Any], key: bytes | None, models: Any = None) -> Any:
    if models is not None and _FAST and type(raw) is bytes:  # compiled fast_parse: bytes only
        event = fast_parse(raw, _FAST, MAX_EVENT_BYTES)
        if event is not None:
            return event  # what pydantic makes of it; else pydantic decides, as below
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError("oversized", f"event is {len(raw)} bytes, limit is {MAX_EVENT_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "exceeds 64-bit range" in str(exc) or "is infinity when parsed" in str(exc):
            # 1e400 is valid JSON that no float holds: a number out of range, not bad JSON
            raise EventError("out_of_range", overflowing_number(raw, exc.pos)) from None
        # Python's json module and some JS encoders write NaN/Infinity; say so, since the
        # parser's "unexpected character" does not tell the sender which number is wrong
        if raw[exc.pos : exc.pos + 9].lstrip(b"-").startswith((b"NaN", b"Infinity")):
            raise EventError(
                "not_json", f"not valid JSON: NaN/Infinity is not a JSON number (char {exc.pos})"
            ) from None
        raise EventError("not_json", f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EventError("schema", f"expected a JSON object, got {type(doc).__name__}")
    kind = doc.get("type")
    if not isinstance(kind, str):
        raise EventError("schema", "missing string field 'type'")
    model = adapter if models is None else models.get(kind, adapter)
    try:
        return model.validate_python(doc)
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] == "union_tag_invalid" for e in errors):
            raise EventError("unknown_type", f"unknown event type {kind[:64]!r}") from None
        # validated once: the union's refusal in its words, without its tag in the field names
        tagged = model is adapter
        raise EventError(*refusal(kind, exc, tagged, _FIELDS_OF.get(kind, ()))) from None
    except ValueError as exc:  # model_post_init checks
        raise EventError("schema", f"{kind}: {exc}") from None


def parse_event(raw: bytes, key: bytes | None = None) -> RunEvent:
    """Validate one run event from its wire bytes; the Kafka key, when given, must be its run_id.

    Raises :class:`EventError` (never anything else) on bad input. Numbers are checked for
    NaN/Infinity (JSON has none, but some encoders emit them) and negative money.
    """
    event = _parse(raw, _RUN_EVENT, key, _RUN_MODELS)
    # bytes compared, not text: a key that is not UTF-8 must not match a run_id holding
    # the replacement character it would decode to
    if key is not None and key != event.run_id.encode():
        shown = key[:300].decode("utf-8", "replace")
        raise EventError(
            "key_mismatch",
            f"Kafka key {shown!r}{'...' if len(key) > 300 else ''} differs from payload run_id "
            f"{event.run_id!r}; key every event by its run_id",
        )
    return event  # type: ignore[no-any-return]


def parse_control_event(raw: bytes) -> ControlEvent:
    return _parse(raw, _CONTROL_EVENT, None)  # type: ignore[no-any-return]
