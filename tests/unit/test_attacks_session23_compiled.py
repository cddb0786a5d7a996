"""Session 23 (H2): the compiled worker's batch step against the interpreted one, on forged
changelog records. A run's record whose grant rows, reservation keys or kept replies' keys
were of another type than the engine writes was read by both builds; the compiled engine then
checked those types where it read them (a ``TypeError`` at every event of the run: an
``engine_error`` dead letter each, the run never decided again) while the interpreter decided
on the forged values. Both builds now refuse such a record when it is read (``ValueError``:
the run's events are ``state_unreadable`` dead letters until it is repaired), as session 11
did for a task's depth. Runs in the suite (interpreted) and against the compiled build
(tests/integration/test_compiled_core.py lists this file); each test failed in both builds
before the fix. Every attack tried, and what each build made of it: bench/RESULTS.md (session
23, H2).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.state import RunState
from tests.unit.test_compiled_worker_batch import _Store
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
T = "2026-11-29T11:59:00+00:00"
POLICY = policy_with(max_handoffs=1000, max_agents_per_run=1000)


def _handoff(n: int) -> bytes:
    return orjson.dumps({
        "type": "handoff_requested", "request_id": f"h{n}", "run_id": "run-1",
        "task_id": f"t{n}", "from_agent": "planner", "to_agent": "researcher", "event_time": T,
    })  # fmt: skip


def _records(first: int, count: int) -> list[InputRecord]:
    return [
        InputRecord("requests", 0, n, b"run-1", _handoff(n)) for n in range(first, first + count)
    ]


def _record() -> dict[str, Any]:
    """A worker's record of run-1 after three handoffs (three linked replies kept)."""
    states = _Store()
    out = BatchProcessor(POLICY, 1, states, worker="w").process(_records(1, 3), NOW)
    return orjson.loads(out.encoded[b"run-1"])  # type: ignore[no-any-return]


def _forged(**changes: Any) -> bytes:
    return orjson.dumps({**_record(), **changes})


def _reply_key(key: Any) -> bytes:
    wire = _record()
    wire["rec"][1][0] = key
    return orjson.dumps(wire)


GRANTS = [
    ["h9", 1, 2, [3]],
    ["h9", None, "researcher", []],
    ["h9", "t1", None, []],
    ["h9", "t1", True, []],
    ["h9", 1.5, "researcher", []],
    [5, "t1", "researcher", []],
    ["h9", "t1", "researcher", ["search", 1]],
    ["h9", "t1", "researcher", "ab"],
    ["h9", "t1", "researcher"],
]
RESERVATIONS = [[5, 1.0, 1, None, "t1"], [None, 1.0, 1, None, "t1"], "h9xyz", []]
REPLY_KEYS = [5, None, True, 1.5, ["h:h1"]]


@pytest.mark.parametrize("row", GRANTS)
def test_a_grant_row_of_other_types_is_unreadable_in_either_build(row: Any) -> None:
    with pytest.raises(ValueError, match="run state key gr"):
        RunState.from_bytes(_forged(gr=[row]))
    state = RunState.from_bytes(_forged(gr=[["h9", "t1", "researcher", ["search"]]]))
    assert state.grants == {"h9": ("t1", "researcher", ("search",))}


@pytest.mark.parametrize("row", RESERVATIONS)
def test_a_reservation_row_not_under_a_request_id_is_unreadable_in_either_build(row: Any) -> None:
    with pytest.raises(ValueError, match="run state key res"):
        RunState.from_bytes(_forged(res=[row]))
    state = RunState.from_bytes(_forged(res=[["h9", 1.0, 1, None, "t1"]]))
    assert state.reserved_usd == 1.0 and list(state.reserved) == ["h9"]


@pytest.mark.parametrize("key", REPLY_KEYS)
def test_a_reply_kept_under_a_key_that_is_not_text_is_unreadable_in_either_build(key: Any) -> None:
    with pytest.raises(ValueError, match="reply key"):
        RunState.from_bytes(_reply_key(key))
    assert RunState.from_bytes(_reply_key("h:h2")).recent_keys() == ["h:h1", "h:h2", "h:h3"]


FORGED = {
    "grant": lambda: _forged(gr=[["h9", 1, 2, [3]]]),
    "reservation": lambda: _forged(res=[[5, 1.0, 1, None, "t1"]]),
    "reply_key": lambda: _reply_key(5),
}


@pytest.mark.parametrize("forged", list(FORGED))
def test_a_forged_run_s_events_are_refused_unreadable_never_engine_errors(forged: str) -> None:
    # compiled, each event of such a run was an engine_error (the grant and reservation at
    # once, the reply key once a write dropped the oldest reply) where the interpreter
    # decided; now the record is refused in both builds, each event a state_unreadable
    states = _Store({b"run-1": FORGED[forged]()})
    proc = BatchProcessor(POLICY, 1, states, worker="w")
    kinds = []
    for b, records in enumerate((_records(4, 1), _records(5, 3), _records(8, 2))):
        out = proc.process(records, NOW + timedelta(seconds=b))
        assert out.decisions == [] and out.encoded == {}
        kinds += [dl.kind for dl in out.dead_letters]
    assert kinds == ["state_unreadable"] * 6


@pytest.mark.parametrize(
    "changes",
    [
        {"st": "x"},
        {"st": 1.5},
        {"st": True},
        {"st": -1},
        {"ch": 5},
        {"ch": None},
        {"res": [["h9", 1e308, 1, None, "t1"]]},
        {"res": [["h9", True, 1, None, "t1"]]},
        {"res": [["h9", -1.0, 1, None, "t1"]]},
        {"res": [["h9", 1.0, 1.5, None, "t1"]]},
        {"res": [["h9", 1.0, True, None, "t1"]]},
        {"res": [["h9", 1.0, 1, None, 5]]},
    ],
)
def test_steps_chain_head_and_reservation_values_of_other_types_are_unreadable(
    changes: dict[str, Any],
) -> None:
    # the interpreter took a text or none as the chain head, text as steps, and 1e308 as a
    # reservation's amount, and raised at each of the run's events (engine_error); the
    # compiled build refused some at the read and raised at each event on others
    (key,) = changes
    with pytest.raises(ValueError, match=f"run state key {key}"):
        RunState.from_bytes(_forged(**changes))
    states = _Store({b"run-1": _forged(**changes)})
    out = BatchProcessor(POLICY, 1, states, worker="w").process(_records(4, 2), NOW)
    assert [dl.kind for dl in out.dead_letters] == ["state_unreadable"] * 2
