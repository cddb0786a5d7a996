"""A changelog record's counters, spend, sticky stop and finished flag are read only as the
engine writes them (session 15, H6's finding): a forged or foreign record with a bool for a
count, a spend past MAX_RUN_USD, a stop that is no reason or a finished flag that is no bool is
refused (``ValueError``: the batch step answers the run's events ``state_unreadable``) in the
interpreted build as in the compiled one. Before, the interpreted build took them: ``tc: false``
was chained as ``false`` (a compiled worker chained 0: two hash chains for one record),
``stop: 0.5`` published a stop whose reason was the text ``0.5``, ``usd: 1e308`` ended as an
``engine_error`` dead letter ("a bug of ours")."""

from __future__ import annotations

import orjson
import pytest

from baton.processors.state import RunState
from baton.schemas.events import MAX_RUN_COUNT, MAX_RUN_USD
from tests.unit.test_engine_support import Run


def _record() -> dict:
    run = Run()
    allowed = run.handoff("t1", "planner", "researcher")
    run.complete(allowed, cost_usd=1.5, tool_calls=2)
    assert run.state is not None
    w = orjson.loads(run.state.to_bytes())
    assert isinstance(w, dict) and w["hc"] == 1 and w["tc"] == 2, w
    return w


def _read(w: dict) -> RunState:
    return RunState.from_record(w["run"].encode(), orjson.dumps(w))


def test_a_record_as_the_engine_writes_it_reads_back_the_same() -> None:
    w = _record()
    state = _read(w)
    assert (state.handoff_count, state.tool_calls, state.spent_usd) == (1, 2, 1.5)
    assert state.stopped is None and state.finished is False
    assert state.to_bytes() == orjson.dumps(w)


@pytest.mark.parametrize(
    ("key", "value", "is_fine"),
    [
        ("hc", True, False),
        ("tc", False, False),
        ("hc", -1, False),
        ("tc", MAX_RUN_COUNT + 1, False),
        ("hc", 1.0, False),
        ("hc", "1", False),
        ("tc", MAX_RUN_COUNT, True),
        ("usd", 1e308, False),
        ("usd", MAX_RUN_USD * 2, False),
        ("usd", -0.5, False),
        ("usd", True, False),
        ("usd", "1.5", False),
        ("usd", MAX_RUN_USD, True),
        ("usd", 3, True),
        ("stop", 0.5, False),
        ("stop", "not_a_reason", False),
        ("stop", ["shared_budget_exceeded"], False),
        ("stop", "shared_budget_exceeded", True),
        ("fin", 1, False),
        ("fin", "true", False),
        ("fin", True, True),
    ],
)
def test_a_forged_total_is_refused_not_decided_on(key: str, value: object, is_fine: bool) -> None:
    w = _record()
    w[key] = value
    if is_fine:
        _read(w)
        return
    with pytest.raises(ValueError, match=f"run state key {key}:"):
        _read(w)


def test_a_nan_spend_is_refused() -> None:
    # orjson writes NaN as null: the record's text is edited by hand as a forger would
    raw = orjson.dumps(_record()).replace(b'"usd":1.5', b'"usd":NaN')
    with pytest.raises(ValueError):
        RunState.from_record(b"run-1", raw)
