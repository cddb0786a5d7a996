"""Attacks on the eighth session's changes (a run's memory layout: shared task and agent dicts,
a task dict of one task as a ``OneTask``, the fresh dedup keys as one flat tuple): a run's
record, decoded and written back, keeps its own bytes whatever other runs' records were read
before it, in the same worker (``1 == 1.0 == True`` must never let one record's value stand
in for another's)."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from baton.processors.state import RunState
from tests.commit_tree import REPO, commit_tree, run_pickled

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


#: RunState's own steps over pickled ops, one output each (hashed bytes for records): the
#: dedup marks at and across FRESH_LIMIT with every kind of digest, tasks past TASK_FOLD with
#: released and replaced ones, copies, records written and read back, and forged records
STATE_OPS_RUNNER = """
import hashlib, pickle, re, sys
from baton.processors.state import RunState, TaskNode
ops, states, out = pickle.load(sys.stdin.buffer), {}, []
def record(s):  # (without the record's seq, session 46's: the start wrote none)
    return hashlib.sha256(re.sub(rb',"sq":[0-9]+}$', b"}", s.to_bytes())).hexdigest()
for op in ops:
    kind, run = op[0], op[1]
    try:
        if kind == "new":
            states[run] = RunState.new(run, "acme", 0.0)
        elif kind == "remember":
            states[run].remember(op[2], [], op[3])
        elif kind == "task":
            states[run].add_task(op[2], TaskNode(*op[3]))
        elif kind == "copy":
            states[op[2]] = states[run].copy()
        elif kind == "read":
            states[run] = RunState.from_bytes(states[run].to_bytes() if op[2] is None else op[2])
        s = states[run]
        if kind == "probe":  # (a key or task id, text: a compiled RunState takes only text)
            probe = op[2]
            out.append((record(s), s.seen_keys(), s.has_seen(probe), s.digest_of(probe),
                        s.task(probe)))
        else:
            out.append((record(s), s.seen_keys(), False, None, None))
    except Exception as exc:
        out.append(type(exc).__name__)
pickle.dump(out, sys.stdout.buffer)
"""


def _digest(rng: random.Random) -> object:
    """A request digest as the engine makes it, or as a changelog writer could."""
    if rng.random() < 0.92:  # most: a run's fresh keys then hold theirs as one bytes
        return f"{rng.getrandbits(64):016x}"
    return rng.choice(
        [None, f"{rng.getrandbits(64):016X}", "0123456789abcdeg", "01 23 45 67 89ab", "h:r1", ""]
    )


#: odd digests a forged record may hold that are still read (text of any shape): one of
#: another type (7, 1.5, [1], true) is refused as the record is read since session 16, in both
#: builds (tests/unit/test_state_wire_digests.py), where the start commit read it
ODD_DIGESTS: list[object] = ["0123456789abcdeX", "", "h:r2"]


def _forged_record(rng: random.Random, keys: list[str], task_ids: list[str]) -> bytes:
    """A format-4 record whose marks disagree with its keys, its keys repeated, its digests
    odd (text ids and parents only: the cases above cover the others)."""
    n = rng.randint(0, 70)
    window = [rng.choice(keys) for _ in range(n)]
    digests = [_digest(rng) if rng.random() < 0.9 else rng.choice(ODD_DIGESTS) for _ in window]
    marks = rng.choice([n, n + rng.randint(0, 40), 31, 32, 33, 0, -1, 2**40, 511, 512, 513])
    tasks = [
        [rng.choice(task_ids), "a", "b", rng.choice([None, "t1"]), rng.randint(0, 3)]
        for _ in range(rng.choice([0, 1, 1, 2, 9]))
    ]
    return orjson.dumps({"v": 4, "run": "run-forged", "tn": "acme", "t0": 0.0, "t": 0.0,
                         "keys": window, "mk": marks, "dg": digests, "tasks": tasks})  # fmt: skip


def _state_ops(seed: int, steps: int) -> list[tuple[object, ...]]:
    rng = random.Random(seed)
    keys = [f"h:r{i}" for i in range(60)] + ["c:x", "é", "タスク", "x" * 60_000, ""]
    task_ids = [f"t{i}" for i in range(50)] + ["", "é", "x" * 60_000, str(uuid.UUID(int=seed))]
    runs = [f"run-{i}" for i in range(4)]
    ops: list[tuple[object, ...]] = [("new", run) for run in runs]
    recent: list[str] = keys[:1]  # the keys remembered last (probed most)
    for _ in range(steps):
        run, c = rng.choice(runs), rng.random()
        if c < 0.45:
            recent = [*recent[-40:], rng.choice(keys)]
            ops.append(("remember", run, recent[-1], _digest(rng)))
        elif c < 0.62:
            node = (rng.choice(["a", "b", ""]), "p", rng.choice([None, "t1"]), rng.randint(0, 5))
            ops.append(("task", run, rng.choice(task_ids), node))
        elif c < 0.8:
            ops.append(("probe", run, rng.choice([*recent, *recent, *keys, *task_ids])))
        elif c < 0.9:
            ops.append(("read", run, None))
        elif c < 0.95:
            ops.append(("copy", run, rng.choice(runs)))
        else:
            ops.append(("read", run, _forged_record(rng, keys, task_ids)))
    return ops


def test_run_states_step_by_step_give_the_start_commits_records_and_answers(
    tmp_path: Path,
) -> None:
    start = commit_tree(tmp_path, "2e17856")
    env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"}
    for seed in (1, 7):
        ops = _state_ops(seed, 3000)
        now = run_pickled(STATE_OPS_RUNNER, ops, env, cwd=REPO)
        then = run_pickled(STATE_OPS_RUNNER, ops, {**env, "PYTHONPATH": str(start)}, cwd=REPO)
        assert sum(type(o) is tuple and o[2] for o in now) > 100  # keys were seen again
        for i, (mine, theirs) in enumerate(zip(now, then, strict=True)):
            assert mine == theirs, f"seed {seed}, step {i}: {str(ops[i])[:300]}"
