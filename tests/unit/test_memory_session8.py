"""What a decoded run holds since the eighth session: its newest dedup keys and their digests
as one flat tuple while they are few, a task dict of one task as a ``OneTask``, the sweep's touched
lists by run id (not each batch's key bytes), the size map's ints shared; each read as
before."""

from __future__ import annotations

import copy
import pickle
import tracemalloc

import pytest

from baton.processors import batch
from baton.processors.state import FRESH_LIMIT, RunState, TaskNode
from baton.processors.state_compact import EMPTY, FRESH_TUPLE_MAX, OneTask, fresh_of, shared
from baton.processors.sweep import DueIndex
from tests.builds import interpreted_only
from tests.unit.test_engine_support import seed_policy

pytestmark = pytest.mark.unit

DIGEST = "0123456789abcdef"


def test_a_runs_few_fresh_keys_hold_their_digests_as_one_bytes_in_one_tuple() -> None:
    state = RunState.new("run-f", "acme", 0.0)
    state.remember("h:a", [], DIGEST)
    state.remember("c:a", [], "fedcba9876543210")
    assert type(state.fresh) is dict  # as the engine makes it (replay never writes)
    state.to_bytes()  # written: one tuple from now on
    assert state.fresh == ("h:a", "c:a", bytes.fromhex(DIGEST + "fedcba9876543210"))
    assert state.has_seen("c:a") and state.digest_of("c:a") == "fedcba9876543210"
    state.remember("p:x", [])  # an approval's key: no digest
    state.remember("h:b", [], "ABCDEF0123456789")  # a record's capitals: kept as text
    state.remember("h:c", [], "h:zz")  # a digest whose text is a key
    assert type(state.fresh) is tuple and type(state.fresh[-1]) is tuple
    for _ in range(2):
        keys = state.fresh_keys()
        assert keys[:5] == ["h:a", "c:a", "p:x", "h:b", "h:c"]
        assert state.fresh_digests()[:5] == [
            DIGEST, "fedcba9876543210", None, "ABCDEF0123456789", "h:zz"
        ]  # fmt: skip
        assert state.digest_of("c:a") == "fedcba9876543210" and state.digest_of("p:x") is None
        assert not state.has_seen("h:zz") and state.has_seen("h:c")
        back = RunState.from_bytes(state.to_bytes())
        assert back == state and back.fresh == state.fresh
        state.remember("h:d", [], DIGEST)
        state.remember("h:e", [], DIGEST)
    assert type(state.fresh) is tuple and len(state.fresh_keys()) == 7
    assert FRESH_TUPLE_MAX == FRESH_LIMIT - 1  # every key fresh holds: tuples once written


def test_fresh_is_folded_into_seen_at_its_limit_with_every_digest() -> None:
    state = RunState.new("run-g", "acme", 0.0)
    for i in range(FRESH_LIMIT + 3):
        state.remember(f"h:{i}", [], f"{i:016x}" if i % 5 else None)
    assert state.fresh_keys() == [f"h:{i}" for i in range(FRESH_LIMIT, FRESH_LIMIT + 3)]
    assert state.digest_of("h:7") == f"{7:016x}" and state.digest_of("h:5") is None
    assert all(state.has_seen(f"h:{i}") for i in range(FRESH_LIMIT + 3))
    assert fresh_of({"k": None}) == ("k", (None,)) and fresh_of({}) is EMPTY


def test_a_record_of_few_keys_under_a_high_mark_count_folds_them() -> None:
    """A changelog writer's record: three keys, 31 marks; the next key is the 32nd mark."""
    state = RunState.new("run-h", "acme", 0.0)
    for key in ("h:a", "c:a", "h:b"):
        state.remember(key, [], DIGEST)
    wire = state.to_wire()
    wire["mk"] = 31
    forged = RunState.from_wire(wire)
    assert type(forged.fresh) is tuple
    forged.remember("c:b", [], DIGEST)  # folded: a tuple's keys and digests into seen
    assert forged.fresh is EMPTY and forged.seen_keys() == ["h:a", "c:a", "h:b", "c:b"]
    assert forged.digest_of("h:b") == DIGEST


def test_a_one_task_dict_reads_like_the_dict_and_refuses_changes() -> None:
    # an owner no other test names: the shared nodes outlive a test, and an equal node made
    # earlier in the process (TaskNode("coder", "planner", None, 1)) would be the one held
    node = TaskNode("one-task-owner", "planner", None, 1)
    one = shared({"0b7c1e2a-task": node}, nodes=True)
    assert type(one) is OneTask and one is shared({"0b7c1e2a-task": node}, nodes=True)
    assert one.get("0b7c1e2a-task") is node and one.get("other") is None
    assert "0b7c1e2a-task" in one and "other" not in one and len(one) == 1
    assert one == {"0b7c1e2a-task": node} and {**one} == {"0b7c1e2a-task": node}
    assert list(one) == ["0b7c1e2a-task"] and one["0b7c1e2a-task"] is node
    with pytest.raises(KeyError):
        one["other"]
    with pytest.raises(TypeError):
        one["other"] = node  # type: ignore[index]
    for again in (copy.deepcopy(one), pickle.loads(pickle.dumps(one))):
        assert again == one
    # a task id that is not text (a changelog writer's) stays a dict: 1 == 1.0 == True
    assert type(shared({1: node}, nodes=True)) is not OneTask


def test_a_run_adds_a_task_to_its_one_task_dict_as_to_any() -> None:
    state = RunState.new("run-t", "acme", 0.0)
    state.add_task("own-1", TaskNode("coder", "planner", None, 1))
    state.to_bytes()  # written: its dict of one held as a OneTask
    assert type(state.new_tasks) is OneTask
    state.add_task("own-2", TaskNode("tester", "coder", "own-1", 2))
    assert type(state.new_tasks) is dict and list(state.new_tasks) == ["own-1", "own-2"]
    assert state.task("own-1") == TaskNode("coder", "planner", None, 1)


def test_touched_lists_keep_no_copy_of_each_batchs_key_bytes() -> None:
    """The consumer gives every record its own key bytes: a run touched by a second batch
    kept that batch's copy (~80 bytes) until the sweep held it, for every run it holds."""
    due = DueIndex(3600.0, 86400.0, hold_idle_s=10.0)
    states = {
        f"run-{i:036d}".encode(): RunState.new(f"run-{i:036d}", "acme", 5.0) for i in range(2000)
    }
    for key, state in states.items():
        due.touch(key, state)
    later = {key: RunState.new(s.run_id, "acme", 6.0) for key, s in states.items()}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key, state in later.items():
            due.touch(bytes(bytearray(key)), state)  # the second batch's own key bytes
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 40 * len(later), f"{grown / len(later):.0f} bytes a run"
    # the runs are still held once idle, by keys equal to the table's
    idle = due.idle_keys(100.0, 10_000, lambda key: later[key].last_event_at)
    assert idle == list(states)


@interpreted_only(
    "a compiled RunState holds only text in run_id: a record naming another type is refused "
    "as it is read (the worker's batch step, both builds: test_compiled_worker_batch)"
)
def test_a_forged_record_whose_run_id_is_not_text_is_touched_by_its_key() -> None:
    due = DueIndex(3600.0, 86400.0, hold_idle_s=10.0)
    odd = RunState.new("x", "acme", 5.0)
    odd.run_id = 7  # type: ignore[assignment]
    due.touch(b"run-odd", odd)
    assert due.idle_keys(100.0, 10, lambda key: 5.0) == [b"run-odd"]


def test_runs_of_one_record_size_share_its_int_in_the_size_map() -> None:
    # (a whole processor: compiled, batch.py's class is native and its __new__ runs __init__)
    proc = batch.BatchProcessor(seed_policy(), 1, {})
    for i in range(3):
        proc.account(f"run-{i}".encode(), int("1481"))  # a new int object each
    sizes = list(proc._sizes.values())
    assert sizes[0] is sizes[1] is sizes[2] and proc.state_bytes == 3 * 1481
    proc.account(b"run-big", 100_000)
    proc.account(b"run-0", None)
    assert proc.state_bytes == 2 * 1481 + 100_000


def test_a_records_numeric_parent_is_never_another_records_equal_one() -> None:
    """Two changelog records name one task with parents 1 and 1.0 (equal, of other types):
    each run writes back its own record's value (2e17856 shared the first run's dict with
    the second, rewriting its record with 1)."""
    node = TaskNode("coder", "planner", 1, 1)
    first = shared({"t": node}, nodes=True)
    second = shared({"t": TaskNode("coder", "planner", 1.0, 1)}, nodes=True)
    assert first is not second and type(second["t"].parent) is float
    assert shared({"t": TaskNode("coder", "planner", True, 1)}, nodes=True)["t"].parent is True
