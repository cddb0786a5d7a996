"""A decoded run is held compactly (issue 15 item 3) and decides exactly as before."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.chain import link
from baton.processors.engine import decide
from baton.processors.faust_adapter import RunStore
from baton.processors.state import RunState, TaskNode
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


def test_runs_whose_task_ids_are_their_own_share_equal_task_nodes() -> None:
    """A fresh uuid a task: the task dicts differ, their nodes (owner, giver, parent, depth)
    do not, and the runs hold one node between them once written or read back."""

    def own(run_id: str) -> RunState:
        run = Run(policy_with(), run_id=run_id)
        run.handoff(f"{run_id}-root", "planner", "coder")
        assert run.state is not None
        run.state.to_bytes()
        return run.state

    one, two = own("run-a"), own("run-b")
    assert one.new_tasks is not two.new_tasks
    assert one.task("run-a-root") is two.task("run-b-root")
    back = RunState.from_bytes(two.to_bytes())
    assert back.task("run-b-root") is one.task("run-a-root")
    assert back == two


def test_a_forged_node_of_other_types_is_never_shared_with_another_run() -> None:
    """``1.0 == 1`` and a numeric parent equal to another run's: a node with such a parent
    stays its run's own, so no record but its own holds its values; a record whose names are
    not text is unreadable in every format (its depths: test_state_format)."""
    from baton.processors.state_compact import shared

    def node(n: TaskNode, task: str = "t") -> TaskNode:
        return shared({task: n}, nodes=True)[task]

    seven = node(TaskNode("coder", "planner", 7, 1), "a")  # a record's numeric parent
    assert node(TaskNode("coder", "planner", 7.0, 1), "b").parent == 7.0
    old = [1, "run-c", "default", 0.0, 0.0, 0, 0.0, 0, None, False, [["t", 1, "planner", None, 1]]]
    old += [[], [], [], [], []]  # format 1: agents, reservations, approvals, keys, replies
    with pytest.raises(TypeError):  # a name that is not text: unreadable, as in format 4
        RunState.from_bytes(orjson.dumps(old))
    one = node(TaskNode("coder", "planner", None, 1), "f")
    assert node(TaskNode("coder", "planner", None, 1), "g") is one and seven.parent == 7
    wire = orjson.loads(_parsed_run("run-c").to_bytes())
    wire["tasks"][0][3] = 1.0  # a parent that is not text: unreadable since session 16
    with pytest.raises(ValueError, match=r"has parent '1\.0'"):
        RunState.from_bytes(orjson.dumps(wire))


def test_a_fresh_digest_is_held_as_its_bytes_and_written_back_as_its_text() -> None:
    state = _parsed_run("run-d")
    keys = state.fresh_keys()
    held = state.fresh[-1]  # every digest the engine's: their 8 bytes each, in one bytes
    assert keys and type(held) is bytes and len(held) == 8 * len(keys)
    wire = orjson.loads(state.to_bytes())
    assert wire["dg"] == [held[i : i + 8].hex() for i in range(0, len(held), 8)]
    assert state.digest_of(keys[0]) == held[:8].hex()


@pytest.mark.parametrize(
    "odd", ["ABCDEF0123456789", "abcdef01 234567", "0x0123456789abc", "abcdef012345678g", ""]
)
def test_a_records_odd_digest_is_kept_as_it_was_written(odd: object) -> None:
    """Capitals, a space, a prefix, a non-hex letter: held as written, so the record written
    back is the same bytes (only the engine's own form is packed; a digest that is not text
    is refused since session 16: test_state_wire_digests)."""
    wire = orjson.loads(_parsed_run("run-e").to_bytes())
    wire["dg"][-1] = odd
    raw = orjson.dumps(wire)
    state = RunState.from_bytes(raw)
    assert state.to_bytes() == raw
    assert state.digest_of(wire["keys"][-1]) == odd


def test_unique_names_never_grow_the_shared_cache_past_its_bound() -> None:
    from baton.processors import state_compact as state_module

    for i in range(state_module._SHARED_MAX + 10):
        state_module.shared({f"agent-{i}": None})
    assert len(state_module._SHARED) <= state_module._SHARED_MAX
    big = {f"t{i}": None for i in range(state_module.SHARED_MAX_ITEMS + 1)}
    assert state_module.shared(big) is big  # large containers are a run's own


def test_a_decoded_run_holds_its_kept_replies_packed_in_one_bundle() -> None:
    state = _parsed_run("run-00000000-0000-0000-0000-0000000003e9")
    keys = state.recent_keys()
    bundle = state.recent[1]
    assert type(bundle) is bytes and bundle[0] == 1  # every linked slot holds the one bundle
    assert all(state.recent[i] is bundle for i in range(1, len(state.recent), 2))
    rows = b"".join(
        orjson.dumps([orjson.loads(d.to_json()) for d in state.replies(k) or ()]) for k in keys
    )
    # packed: well under the rows' JSON (~460 bytes a decision)
    assert len(bundle) < 0.6 * len(rows)


def test_a_long_run_written_each_step_keeps_its_replies_and_the_record_of_one_never_written() -> (
    None
):
    """The bundle is rebuilt at each write (a new reply, the oldest dropped past
    RECENT_REPLIES): every kept key answers with its own decisions, and the record is the
    same bytes as a run's whose decisions were never bundled."""
    written, plain = Run(policy_with(), run_id="run-w"), Run(policy_with(), run_id="run-w")
    made: dict[str, list[Any]] = {}
    for i in range(9):
        for run in (written, plain):
            event = handoff(f"r{i}", f"t{i}", "planner", f"coder{i % 3}", run_id="run-w", t=i)
            decisions = run.send(event, t=i)
            link(run.state, decisions, b"key")  # type: ignore[arg-type]
        made[f"h:r{i}"] = decisions
        assert written.state is not None and plain.state is not None
        raw = written.state.to_bytes()
        for key in written.state.recent_keys():
            assert written.state.replies(key) == made[key]
    assert plain.state is not None and written.state is not None
    assert written.state.to_bytes() == raw == plain.state.to_bytes()
    assert RunState.from_bytes(raw) == written.state == plain.state


# (no deadline: hypothesis fails an example past 200 ms; on the shared 2-core host at load ~6
# this test failed once under xdist and passed alone and in the next runs)
@settings(deadline=None)
@given(
    entries=st.lists(
        st.tuples(st.text(max_size=30), st.lists(st.text(max_size=40), max_size=4)),
        min_size=1,
        max_size=6,
        unique_by=lambda e: e[0],
    )
)
def test_a_bundle_gives_back_each_keys_exact_rows(entries: list[tuple[str, list[str]]]) -> None:
    """Keys and texts with quotes, commas, brackets, NULs and any Unicode: each key's rows
    come back byte for byte, and the record's ``rec`` is the plain JSON of them all."""
    from baton.processors.state_replies import _bundle, _bundle_entries, _bundle_json, held_rows

    parts = [orjson.dumps([key, [[*texts, "run-1"]]]) for key, texts in entries]
    bundle = _bundle(parts)
    assert _bundle_entries(bundle) == parts
    assert orjson.loads(_bundle_json(bundle)) == [orjson.loads(p) for p in parts]
    for (key, texts), _part in zip(entries, parts, strict=True):
        assert held_rows(bundle, key) == orjson.dumps([[*texts, "run-1"]])


def test_packed_replies_answer_a_retry_with_the_decision_made() -> None:
    run = Run(policy_with(shared_max_usd=20))
    first = run.send(handoff("r1", "t1", "planner", "coder", estimated_usd=1.0))
    link(run.state, first, b"key")  # type: ignore[arg-type]
    state = run.state
    assert state is not None
    raw = state.to_bytes()
    assert state.recent[1][0] == 1  # packed, in the run's bundle
    for held in (state, RunState.from_bytes(raw)):  # packed, and as read from its record
        again, answer = decide(held, handoff("r1", "t1", "planner", "coder", estimated_usd=1.0),
                               run.policy, at(3))  # fmt: skip
        assert again is held and answer == first and answer[0].to_json() == first[0].to_json()
        assert held.to_bytes() == raw


@settings(deadline=None)
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


def test_a_key_remembered_again_replaces_its_entry_of_the_bundle_not_the_oldest() -> None:
    """remember() puts a kept key's new replies at its place (an approval re-opened): the
    newest entry replaced must not be taken for the oldest dropped."""
    run = Run(policy_with(), run_id="run-r")
    for i in range(3):
        decisions = run.send(handoff(f"r{i}", f"t{i}", "planner", "coder", run_id="run-r"))
        link(run.state, decisions, b"key")  # type: ignore[arg-type]
    state = run.state
    assert state is not None
    state.to_bytes()
    newest = state.replies("h:r2")
    assert newest is not None and state.recent[5][0] == 1  # bundled
    again = dataclasses.replace(newest[0], reason="approval_expired")
    state.remember("h:r2", [again])
    raw = state.to_bytes()
    assert state.replies("h:r2") == [again] and state.replies("h:r0") is not None
    assert [k for k, _ in orjson.loads(raw)["rec"]] == ["h:r0", "h:r1", "h:r2"]
    assert orjson.loads(raw)["rec"][2][1][0][6] == "approval_expired"
    assert RunState.from_bytes(raw) == state


def test_a_record_with_an_unhashable_task_parent_is_unreadable() -> None:
    """A record's task parent that is not a task id (a list: it could not even key the dicts
    runs share) is refused as the record is read, in both builds, since session 16 (it was
    read and decided on before): its run's events are ``state_unreadable`` dead letters."""
    wire = orjson.loads(_parsed_run("run-odd").to_bytes())
    wire["tasks"][1][3] = ["not", "a", "task id"]
    with pytest.raises(ValueError, match="expected a task id or none"):
        RunState.from_wire(wire)
