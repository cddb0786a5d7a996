"""The engine's rules read a handoff's and a report's fields as engine_fields holds them: every
field of the event, the event's own values (the same objects), in either build."""

from __future__ import annotations

import pytest

from baton.processors.engine_fields import Handoff, Report, handoff_of, report_of
from baton.schemas.events import HandoffCompleted, HandoffRequested
from tests.unit.test_engine_support import at, completed, handoff

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("event", "view", "fields_of"),
    [
        (
            handoff("r1", "t1", "planner", "billing", parent_task_id="t0", tool="crm.read",
                    tools=["a", "b"], action="refund", estimated_usd=2, estimated_tool_calls=3,
                    task_kind="refunds", decide_by=at(9), tenant="acme"),
            handoff_of,
            HandoffRequested,
        ),
        (
            completed("r1", "t1", "billing", 1.5, 2, status="error", steps=4, tools=["a"]),
            report_of,
            HandoffCompleted,
        ),
    ],
)  # fmt: skip
def test_the_view_holds_every_field_of_its_event_as_the_event_holds_it(
    event: HandoffRequested | HandoffCompleted, view: object, fields_of: type
) -> None:
    seen = view(event)  # type: ignore[operator]
    names = [n for n in fields_of.model_fields if n != "type"]
    # a field added to the event and not to its view cannot be read by the rules: this fails
    assert sorted(n for n in names if not hasattr(seen, n)) == []
    for name in names:
        assert getattr(seen, name) is getattr(event, name), name
    # the same object again for a view itself (the engine's hot path passes views)
    assert view(seen) is seen  # type: ignore[operator]
    assert type(seen) in (Handoff, Report)
