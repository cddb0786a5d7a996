"""Session 11 (H3): the rules' leftovers of session 10's attack.

The request normal form the worker's digest and the SDK's matcher each restated (one rule
now, ``dedup_keys.untimed_fields``). Each test fails on the commit before its fix.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.processors.dedup_keys import request_digest, untimed_fields
from baton.processors.recorded import input_text
from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.events import (
    HandoffCompleted,
)
from baton.streams.sdk.base import answers_request
from tests.unit.test_engine_support import at, completed

pytestmark = pytest.mark.unit

# ---------------------------------------------------------------- 3. one request normal form


def _decision_with_input(event: HandoffCompleted, text: str) -> Decision:
    return Decision(
        decision_id="d",
        request_id=event.request_id,
        run_id=event.run_id,
        tenant=event.tenant,
        phase=Phase.POST_HANDOFF,
        outcome=Outcome.RECORDED,
        reason=Reason.WITHIN_BUDGET,
        policy_version="p",
        decided_at=datetime(2026, 3, 1, tzinfo=UTC),
        input=text,
    )


def test_the_sdk_takes_a_decision_whose_input_differs_only_by_tools_null() -> None:
    # the worker's digest leaves out tools: null (a field added later, at its default), so a
    # report with it is the same request; the SDK's own copy of the rule kept it, and refused
    # the worker's answer to its own report (failed closed at its timeout)
    mine = completed("r1", "t1", "billing", cost_usd=1.0)
    theirs = mine.model_copy(update={"event_time": at(5)})
    assert request_digest(mine) == request_digest(theirs)
    said = input_text(theirs)[:-1] + ',"tools":null}'
    assert answers_request(mine)(_decision_with_input(mine, said))


def test_the_normal_form_drops_only_an_int_zero_of_steps() -> None:
    # 1 == 1.0 == True: a steps of 0.0 or false is not the report that left steps out
    for steps in (0.0, False):
        assert "steps" in untimed_fields({"steps": steps})
    assert untimed_fields({"steps": 0, "tools": None, "event_time": 1, "a": 1}) == {"a": 1}


_reports = st.builds(
    completed,
    st.sampled_from(["r1", "r2"]),
    st.sampled_from(["t1", "t2"]),
    st.sampled_from(["billing", "search"]),
    st.sampled_from([0.0, 1.0, 2.5]),
    st.integers(0, 2),
    status=st.sampled_from(["ok", "error"]),
    t=st.integers(0, 3),
    steps=st.integers(0, 2),
    tools=st.one_of(st.none(), st.lists(st.sampled_from(["a.b", "c.d"]), max_size=1)),
)


@settings(max_examples=300, deadline=None)
@given(_reports, _reports)
def test_the_sdk_takes_a_decision_exactly_when_the_worker_takes_it_for_the_same_request(
    mine: HandoffCompleted, theirs: HandoffCompleted
) -> None:
    said = _decision_with_input(mine, input_text(theirs))
    assert answers_request(mine)(said) == (request_digest(mine) == request_digest(theirs))
