"""Attacks on the eighth session's changes (a run's memory layout: shared task and agent dicts,
a task dict of one task as a ``OneTask``, the fresh dedup keys as one flat tuple): a run's
record, decoded and written back, keeps its own bytes whatever other runs' records were read
before it, in the same worker (``1 == 1.0 == True`` must never let one record's value stand
in for another's)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from baton.processors.state import RunState

pytestmark = pytest.mark.unit

#: a format-4 record of one handoff t1 planner -> coder (to edit as a changelog writer could)
FORMAT_4 = {
    "v": 4, "run": "run-a", "tn": "acme", "t0": 0.0, "t": 0.0, "hc": 1,
    "tasks": [["t1", "coder", "planner", None, 1]], "ag": ["planner", "coder"],
    "keys": ["h:r0"], "mk": 1, "dg": ["0123456789abcdef"],
}  # fmt: skip

#: format 3 (positional), as test_state_format's FORMAT_3_ONE_HANDOFF without its replies
FORMAT_3 = [
    3, "run-a", "default", 1772355600.0, 1772355600.0, 1, 0.0, 0, None, False,
    [["t1", "worker", "planner", None, 1]], ["planner", "worker"], [], [], ["h:req-1"], [], 1,
    ["27933a633ae2139b"], None, "", 0, [],
]  # fmt: skip


def _written_back(record: Any) -> Any:
    """The record as a worker writes it back after reading it (decoded, encoded)."""
    return orjson.loads(RunState.from_bytes(orjson.dumps(record)).to_bytes())


def _format_4_with_task_id(run: str, task_id: object, owner: str) -> dict[str, Any]:
    return {**FORMAT_4, "run": run, "tasks": [[task_id, owner, "planner", None, 1]]}


@pytest.mark.parametrize("first, then", [(1, 1.0), (1.0, True), (True, 1), (0, False)])
def test_a_task_id_that_is_not_text_is_written_back_as_its_own_record_holds_it(
    first: object, then: object
) -> None:
    # one record's task id 1, another's 1.0 (equal as dict keys): the second is written back
    # with its own 1.0, never the 1 of a record read before it (found at 2e17856: the shared
    # task dicts were found by their items, and (1, node) == (1.0, node)). The shared dicts
    # outlive a test: each case names an owner of its own, so none finds an earlier case's
    owner = f"coder-{first!r}-{then!r}"
    _written_back(_format_4_with_task_id("run-first", first, owner))
    back = _written_back(_format_4_with_task_id("run-then", then, owner))
    assert orjson.dumps(back["tasks"]) == orjson.dumps([[then, owner, "planner", None, 1]])


@pytest.mark.parametrize("agent", [1, 1.0, True, None, ["a"]])
def test_a_format_3_agent_name_that_is_not_text_makes_the_record_unreadable(agent: object) -> None:
    # as format 4's: format 3 took the agents as they were, and the shared agent dict of a
    # record read before it gave its 1 to this record's 1.0 (found at 2e17856); unreadable,
    # the run's events are dead letters (state_unreadable) until its record is repaired
    w = list(FORMAT_3)
    w[11] = [agent, "planner"]
    with pytest.raises(TypeError):
        RunState.from_bytes(orjson.dumps(w))
    w[11] = ["planner", "worker"]
    assert _written_back(w)["ag"] == ["planner", "worker"]


def test_a_format_3_record_with_an_agent_that_is_not_text_stops_its_runs_events() -> None:
    # fail closed: the run's next handoff is a dead letter naming the unreadable state, never
    # decided as a new run (which would forget its stop and spend)
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from baton.processors.batch import BatchProcessor, InputRecord
    from baton.processors.faust_adapter import RunStore
    from baton.schemas.policy_load import parse_policy
    from baton.streams.partitioner import partition_for

    w = list(FORMAT_3)
    w[11] = [1.0, "planner"]
    key = b"run-a"
    store: dict[bytes, Any] = {key: orjson.dumps(w)}
    table = SimpleNamespace(data=SimpleNamespace(data=store, _key_partition={}))
    proc = BatchProcessor(
        parse_policy("multi_agent:\n  max_handoffs: 8\n"), 8, RunStore(table, 8), worker="w-1",
        chain_key=b"k" * 32, approvals_topic="gov.approvals",
    )  # fmt: skip
    doc = {"type": "handoff_requested", "request_id": "req-2", "run_id": "run-a",
           "task_id": "t2", "from_agent": "planner", "to_agent": "worker",
           "event_time": "2026-11-30T08:00:00Z"}  # fmt: skip
    rec = InputRecord("gov.handoff.requests", partition_for(key, 8), 7, key, orjson.dumps(doc))
    out = proc.process([rec], datetime(2026, 11, 30, 8, 0, tzinfo=UTC))
    assert out.decisions == [] and out.encoded == {}
    [dead] = out.dead_letters
    assert b"state_unreadable" in dead.value
