"""A handoff's and a report's fields as the engine's rules read them: plain attributes, one
object an event.

Pydantic keeps an event's field values in its instance ``__dict__``, but reading them as
attributes takes the model's slow path (``BaseModel.__getattr__`` keeps CPython 3.11 from
specialising ``LOAD_ATTR``), and a handoff's decide reads ~25 of them. Compiled
(build_backend/compiled_modules.txt), :class:`Handoff` and :class:`Report` are native
classes: a compiled rule reads a field of one from its C struct (a few instructions, where
any Python object's attribute costs ~230), and the fields are copied out of the event's
``__dict__`` once. Interpreted, the object shares the event's ``__dict__`` (nothing copied,
a read at plain-object speed).

Fields only, as the model holds them (no ``type``, no properties such as ``kind``), never
changed: an event is frozen. The values are ``Any``: whatever the model holds, passed on
unchecked and unconverted (a compiled ``float`` field would turn a client's int into a float,
another decision record). tests/unit/test_engine_fields.py checks that each class has every
field of its event.
"""

from __future__ import annotations

from types import FunctionType
from typing import Any, Final

__all__ = ["Handoff", "Report", "handoff_fields", "handoff_of", "report_fields", "report_of"]


class Handoff:
    """A HandoffRequested's fields (schemas/events.py)."""

    request_id: Any
    run_id: Any
    tenant: Any
    task_id: Any
    parent_task_id: Any
    task_kind: Any
    from_agent: Any
    to_agent: Any
    action: Any
    tool: Any
    tools: Any
    estimated_usd: Any
    estimated_tool_calls: Any
    decide_by: Any
    event_time: Any

    def __init__(self, fields: dict[str, Any]) -> None:
        self.request_id = fields["request_id"]
        self.run_id = fields["run_id"]
        self.tenant = fields["tenant"]
        self.task_id = fields["task_id"]
        self.parent_task_id = fields["parent_task_id"]
        self.task_kind = fields["task_kind"]
        self.from_agent = fields["from_agent"]
        self.to_agent = fields["to_agent"]
        self.action = fields["action"]
        self.tool = fields["tool"]
        self.tools = fields["tools"]
        self.estimated_usd = fields["estimated_usd"]
        self.estimated_tool_calls = fields["estimated_tool_calls"]
        self.decide_by = fields["decide_by"]
        self.event_time = fields["event_time"]


class Report:
    """A HandoffCompleted's fields (schemas/events.py)."""

    request_id: Any
    run_id: Any
    tenant: Any
    task_id: Any
    agent: Any
    cost_usd: Any
    tool_calls: Any
    status: Any
    steps: Any
    tools: Any
    event_time: Any

    def __init__(self, fields: dict[str, Any]) -> None:
        self.request_id = fields["request_id"]
        self.run_id = fields["run_id"]
        self.tenant = fields["tenant"]
        self.task_id = fields["task_id"]
        self.agent = fields["agent"]
        self.cost_usd = fields["cost_usd"]
        self.tool_calls = fields["tool_calls"]
        self.status = fields["status"]
        self.steps = fields["steps"]
        self.tools = fields["tools"]
        self.event_time = fields["event_time"]


_new: Final = object.__new__


def handoff_fields(fields: dict[str, Any]) -> Handoff:
    """The Handoff of a HandoffRequested whose ``__dict__`` is ``fields``."""
    if _NATIVE:
        return Handoff(fields)
    view: Any = _new(Handoff)
    view.__dict__ = fields
    return view  # type: ignore[no-any-return]


def report_fields(fields: dict[str, Any]) -> Report:
    """The Report of a HandoffCompleted whose ``__dict__`` is ``fields``."""
    if _NATIVE:
        return Report(fields)
    view: Any = _new(Report)
    view.__dict__ = fields
    return view  # type: ignore[no-any-return]


def handoff_of(req: object) -> Handoff:
    """``req`` as a Handoff: itself, or a HandoffRequested's fields (a caller outside the
    engine's hot path, such as approvals.py, passes the event)."""
    if type(req) is Handoff:
        return req
    return handoff_fields(req.__dict__)


def report_of(done: object) -> Report:
    """``done`` as a Report: itself, or a HandoffCompleted's fields."""
    if type(done) is Report:
        return done
    return report_fields(done.__dict__)


#: True in the compiled build (this module's functions are C functions there): a native
#: instance has no ``__dict__`` to share
_NATIVE: Final = type(handoff_of) is not FunctionType
