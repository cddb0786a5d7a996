"""A decoded run is held compactly (issue 15 item 3) and decides exactly as before."""

from __future__ import annotations

import copy
import pickle
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.chain import link
from baton.processors.engine import decide
from baton.processors.faust_adapter import RunStore
from baton.processors.state import RunState
from baton.processors.state_replies import pack, unpack
from baton.schemas.events import parse_event
from baton.streams.partitioner import partition_for
from tests.unit.test_engine_support import Run, at, handoff, policy_with

pytestmark = pytest.mark.unit


def _parsed_run(run_id: str) -> RunState:
    """A run decided from events parsed from the wire (each event its own strings)."""
    state = None
    policy = policy_with()
    for i, (giver, taker) in enumerate([("planner", "coder"), ("coder", "tester")]):
        raw = orjson.dumps(
            {
                "type": "handoff_requested", "request_id": f"{run_id}-r{i}", "run_id": run_id,
                "task_id": f"t{i}", "from_agent": giver, "to_agent": taker,
                "parent_task_id": f"t{i - 1}" if i else None, "event_time": "2026-03-01T09:00:00Z",
            }
        )  # fmt: skip
        state, decisions = decide(state, parse_event(raw, run_id.encode()), policy, at(i))
        link(state, decisions, b"key")
    assert state is not None
    state.to_bytes()  # as the batch step writes it: its linked replies packed
    return state


def test_live_runs_share_their_agent_names_not_each_events_copies() -> None:
    one, two = _parsed_run("run-a"), _parsed_run("run-b")
    assert [x is y for x, y in zip(one.agents, two.agents, strict=True)] == [True] * 3
    node_a, node_b = one.task("t1"), two.task("t1")
    assert node_a is not None and node_b is not None
    agents = list(two.agents)
    assert node_a.owner is node_b.owner is agents[2]
    assert node_a.giver is node_b.giver is agents[1]
    assert node_a.parent == "t0"


def test_runs_with_the_same_agents_and_tasks_share_one_frozen_dict_each() -> None:
    one, two = _parsed_run("run-a"), _parsed_run("run-b")
    assert one.agents is two.agents and one.new_tasks is two.new_tasks
    with pytest.raises(TypeError, match="held by many runs"):
        one.agents["intruder"] = None  # type: ignore[index]
    with pytest.raises(TypeError, match="held by many runs"):
        one.new_tasks.pop("t1")
    # a run that goes on gets dicts of its own; the other run is left as it was
    run = Run(policy_with(), run_id="run-a")
    run.state = one
    run.handoff("t2", "tester", "reviewer", parent_task_id="t1", t=5)
    assert run.state is not None and "reviewer" in run.state.agents
    assert "reviewer" not in two.agents
    assert two.task("t2") is None and list(two.agents) == ["planner", "coder", "tester"]
    # copied and pickled runs read back alike (not through the refused __setitem__)
    for again in (copy.deepcopy(two), pickle.loads(pickle.dumps(two))):
        assert again.to_bytes() == two.to_bytes() and again.agents == two.agents


def test_a_run_read_back_from_its_record_shares_its_agents_and_small_task_tree() -> None:
    one, two = _parsed_run("run-a"), _parsed_run("run-b")
    a, b = RunState.from_bytes(one.to_bytes()), RunState.from_bytes(two.to_bytes())
    assert a.agents is b.agents is one.agents
    assert a.tasks is b.tasks and a == one


def test_unique_names_never_grow_the_shared_cache_past_its_bound() -> None:
    from baton.processors import state as state_module

    for i in range(state_module._SHARED_MAX + 10):
        state_module.shared({f"agent-{i}": None})
    assert len(state_module._SHARED) <= state_module._SHARED_MAX
    big = {f"t{i}": None for i in range(state_module.SHARED_MAX_ITEMS + 1)}
    assert state_module.shared(big) is big  # large containers are a run's own


def test_a_decoded_run_holds_its_kept_replies_packed() -> None:
    state = _parsed_run("run-00000000-0000-0000-0000-0000000003e9")
    for key in state.recent_keys():
        held = state.recent[state.recent.index(key) + 1]
        rows = orjson.dumps([orjson.loads(d.to_json()) for d in state.replies(key) or ()])
        # packed: well under the rows' JSON (~460 bytes a decision)
        assert type(held) is bytes and held[0] == 0 and len(held) < 0.7 * len(rows)


def test_packed_replies_answer_a_retry_with_the_decision_made() -> None:
    run = Run(policy_with(shared_max_usd=20))
    first = run.send(handoff("r1", "t1", "planner", "coder", estimated_usd=1.0))
    link(run.state, first, b"key")  # type: ignore[arg-type]
    state = run.state
    assert state is not None
    raw = state.to_bytes()
    assert state.recent[1][0] == 0  # packed
    for held in (state, RunState.from_bytes(raw)):  # packed, and as read from its record
        again, answer = decide(held, handoff("r1", "t1", "planner", "coder", estimated_usd=1.0),
                               run.policy, at(3))  # fmt: skip
        assert again is held and answer == first and answer[0].to_json() == first[0].to_json()
        assert held.to_bytes() == raw


@given(texts=st.lists(st.text(max_size=40), max_size=6))
def test_packing_gives_back_the_exact_rows(texts: list[str]) -> None:
    raw = orjson.dumps([[*texts, "\x00", "run-1"]])
    packed = pack(raw)
    assert packed[0] == 0 and unpack(packed) == raw
    assert unpack(raw) is raw  # rows not packed are their JSON


def test_a_record_whose_digests_do_not_go_with_its_keys_is_refused() -> None:
    state = _parsed_run("run-x")
    wire = orjson.loads(state.to_bytes())
    wire["dg"] = wire["dg"][:1]  # two keys, one digest: which request was each key?
    forged = orjson.dumps(wire)
    with pytest.raises(ValueError, match="1 request digests for 2 keys: expected one for each"):
        RunState.from_bytes(forged)
    # in the worker: the run's events are dead letters, never decided on that state
    table = SimpleNamespace(data=SimpleNamespace(data={b"run-x": forged}, _key_partition={}))
    proc = BatchProcessor(policy_with(), 4, RunStore(table, 4), worker="w")
    retry = handoff("run-x-r9", "t9", "planner", "coder", run_id="run-x")
    record = InputRecord("gov.handoff.requests", partition_for(b"run-x", 4), 7, b"run-x",
                         retry.to_json())  # fmt: skip
    out = proc.process([record], at(5))
    assert not out.decisions and [d.kind for d in out.dead_letters] == ["state_unreadable"]
    assert b"request digests" in out.dead_letters[0].value
