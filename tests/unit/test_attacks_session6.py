"""The sixth session's attack review of the worker's memory of decoded runs (shared agent and
task dicts, the reply bundle, the due index's per-second buckets): each test is an attack
that broke something, fixed, or one that held and is pinned."""

from __future__ import annotations

import dataclasses
import logging
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.engine import NO_KILLS
from baton.processors.faust_adapter import RunStore
from baton.processors.state import RunState
from baton.processors.sweep import DueIndex
from baton.processors.sweep_step import sweep_due
from baton.schemas.decision import Decision
from baton.streams.partitioner import partition_for
from tests.helpers import handoff
from tests.unit.test_engine_support import policy_with
from tests.unit.test_state_memory import _parsed_run

pytestmark = pytest.mark.unit

PARTITIONS = 4
NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
TOPIC = "gov.handoff.requests"


def _record(run: str, offset: int, event: Any) -> InputRecord:
    key = run.encode()
    return InputRecord(TOPIC, partition_for(key, PARTITIONS), offset, key, event.to_json())


def _store() -> RunStore:
    table = SimpleNamespace(data=SimpleNamespace(data={}, _key_partition={}))
    return RunStore(table, PARTITIONS)


def _sweep(proc: BatchProcessor, due: DueIndex, at: datetime) -> Any:
    every = set(range(PARTITIONS))
    return sweep_due(
        proc, due, at, active=every, ready=every, kills=NO_KILLS,
        run_retention_s=3600.0, tombstone_retention_s=86400.0, limit=100,
    )  # fmt: skip


# ------------------------------------------------------------------ shared agent/task dicts


def test_a_forged_record_cannot_retype_another_runs_task_tree_through_the_shared_cache() -> None:
    """Runs with equal task dicts share one copy, found by its items; ``1.0 == 1 == True``,
    so a changelog record of run A whose task depth was ``1.0`` made run B (same task and
    agent names, its own depth 1) write ``1.0`` into its own record and publish depth
    ``2.0`` for its subtask: one run's record reached another run's. A depth that is not an
    integer now makes the forged record unreadable (its events dead letters), and B keeps
    its own integers."""
    task, giver, taker = "s6-depth-task", "s6-depth-planner", "s6-depth-coder"
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(policy_with(), 1, states, worker="w")
    out = proc.process(
        [InputRecord(TOPIC, 0, 1, b"run-a", handoff("run-a", 1, "s6-other").to_json())], NOW
    )
    forged = orjson.loads(out.encoded[b"run-a"])
    # B's task and agents, its depth a float (read before any run wrote that task dict)
    forged["tasks"], forged["ag"] = [[task, taker, giver, None, 1.0]], [giver, taker]
    store = _store()
    store._data[b"run-a"] = orjson.dumps(forged)  # restored from the changelog
    forging = BatchProcessor(policy_with(), PARTITIONS, store, worker="w")
    refused = forging.process(
        [_record("run-a", 2, handoff("run-a", 2, "other", giver, taker))], NOW
    )

    victim: dict[bytes, RunState] = {}
    proc = BatchProcessor(policy_with(), 1, victim, worker="w")
    first = proc.process(
        [InputRecord(TOPIC, 0, 1, b"run-b", handoff("run-b", 1, task, giver, taker).to_json())],
        NOW,
    )
    sub = handoff("run-b", 2, "s6-depth-sub", taker, giver, parent=task)
    second = proc.process([InputRecord(TOPIC, 0, 2, b"run-b", sub.to_json())], NOW)
    depths = [row[4] for row in orjson.loads(second.encoded[b"run-b"])["tasks"]]
    assert depths == [1, 2] and all(type(d) is int for d in depths)
    assert b'"depth":1,' in first.decisions[0][1].to_json()
    assert b'"depth":2,' in second.decisions[0][1].to_json()
    assert [d.kind for d in refused.dead_letters] == ["state_unreadable"]


# ------------------------------------------------------------------ the reply bundle


_TEMPLATE: Decision | None = None


def _decision(n: int, linked: bool, detail: str | None = None) -> Decision:
    global _TEMPLATE
    if _TEMPLATE is None:
        run = _parsed_run("run-bundle")
        _TEMPLATE = (run.replies(run.recent_keys()[0]) or [])[0]
    return dataclasses.replace(
        _TEMPLATE,
        request_id=f"q{n}",
        decision_id=f"{n:032x}",
        chain_hash=f"{n:064x}" if linked else None,
        detail=detail,
    )


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["new", "new", "again", "link", "write", "write", "read", "copy"]),
        st.integers(0, 30),  # which earlier key (again), how many decisions (new)
        st.booleans(),  # linked at once
        st.sampled_from([None, None, "x" * 60_000, '"],["\\\u0000é']),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_a_bundled_run_answers_every_kept_key_as_a_never_written_run_does(
    ops: list[tuple[str, int, bool, str | None]],
) -> None:
    """Held: writes (the bundle appended to, rebuilt, its oldest dropped), keys remembered
    again (dropped past RECENT_REPLIES or not), replies linked after they were kept, 60 KB
    replies, keys full of JSON syntax, copies and records read back: every kept key answers
    with exactly the decisions a run never written keeps, and the record's ``rec`` is theirs."""
    bundled = RunState.new("run-bundle", "default", 1.0)
    plain = RunState.new("run-bundle", "default", 1.0)
    keys: list[str] = []
    for n, (op, pick, linked, text) in enumerate(ops, start=1):
        if op == "new" or not keys:
            key = f'h:{n}"],[' if text and text.startswith('"') else f"h:k{n}"
            made = [_decision(n * 10 + j, linked, text) for j in range(1 + pick % 3)]
            keys.append(key)
        elif op == "again":
            key = keys[-1 - pick % len(keys)]
            made = [_decision(n * 10, linked, text)]
        else:
            key = ""
        if key:
            bundled.remember(key, made)
            plain.remember(key, [dataclasses.replace(d) for d in made])
        elif op == "link":  # the worker links a step's decisions after remembering them
            for state in (bundled, plain):
                for held in state.recent[1::2]:
                    unlinked = [held] if type(held) is Decision else held
                    for d in unlinked if type(unlinked) is list else []:
                        d.chain_hash = d.chain_hash or "e" * 64
        elif op == "write":
            raw = bundled.to_bytes()
            assert orjson.loads(raw)["rec"] == plain.to_wire()["rec"]
        elif op == "read":
            bundled = RunState.from_bytes(bundled.to_bytes())
        else:
            bundled = bundled.copy()
        assert bundled.recent_keys() == plain.recent_keys()
        for kept in plain.recent_keys():
            got, want = bundled.replies(kept), plain.replies(kept)
            assert got is not None and want is not None
            assert [d.to_json() for d in got] == [d.to_json() for d in want]


# ------------------------------------------------------------------ the due index


def test_a_run_touched_by_every_batch_while_the_clock_is_behind_it_is_indexed_once() -> None:
    """A clock stepped back (NTP) leaves a busy run's last event ahead of it: every batch
    touched the run into that same second's list, each time with the batch's own key bytes,
    and the list is read only once the clock passes that second by hold_idle_s: an hour's
    batches of one run held ~4.6 MB there (100,000 touches), a thousand runs gigabytes. A
    second's list now drops its repeats as it grows: a few KB, however often it is touched."""
    due = DueIndex(3600.0, 86400.0, hold_idle_s=30.0)
    ahead = RunState.new("run-ahead", "acme", NOW.timestamp() + 3600)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20_000):
            due.touch(bytes(bytearray(b"run-ahead")), ahead)  # each batch's own key
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, f"{grown} bytes for one run touched 20,000 times"
    # and it is still held once its last event is hold_idle_s behind the clock
    later = ahead.last_event_at + 31
    assert due.idle_keys(later, 10, lambda key: ahead.last_event_at) == [b"run-ahead"]


def test_a_limited_sweep_of_a_huge_restored_table_costs_its_limit_not_the_table() -> None:
    """After a rebalance every restored run is due in one second's bucket, and the sweep
    looks at 5,000 a second: the limited pop moved every run it did not reach into a new
    bucket, ~0.23 s of CPU per sweep under the worker's lock for a million runs, each
    second for 200 s (the heap it replaced: ~0.01 s). The rest now stays where it is."""

    def sweep_cpu(runs: int) -> float:
        due = DueIndex(3600.0, 86400.0)
        due.rebuild_keys([f"run-{i:07d}".encode() for i in range(runs)], 1000.0)
        best = float("inf")
        for i in range(3):
            t0 = time.process_time()
            popped = list(due.pop_due(1001.0 + i, limit=2_000))
            best = min(best, time.process_time() - t0)
            assert len(popped) == 2_000
        return best

    small, huge = sweep_cpu(6_000), sweep_cpu(300_000)
    assert huge < 5 * small + 0.005, f"{huge:.4f} s a sweep of 300,000 against {small:.4f}"


def test_a_limited_pop_closed_early_or_crossed_by_a_push_loses_no_run() -> None:
    """Held (and kept with the in-place put-back): the keys a limited pop did not reach are
    all popped by the next sweeps, with a push into the same second meanwhile."""
    due = DueIndex(3600.0, 86400.0)
    keys = [f"run-{i}".encode() for i in range(50)]
    due.rebuild_keys(keys, 100.0)
    seen: list[bytes] = []
    for key in due.pop_due(100.0, limit=20):
        seen.append(key)
        if key == keys[3]:
            due.push(b"late", 99.5)  # a run due in this very second, pushed mid-pop
    for key in due.pop_due(100.0, limit=20):
        seen.append(key)
        if len(seen) == 25:
            break  # the sweep's loop ended by an exception: the generator is closed
    seen += list(due.pop_due(100.0, limit=20))
    seen += list(due.pop_due(100.0))
    assert sorted(seen) == sorted([*keys, b"late"])
    assert len(due) == 0


def test_a_forged_record_whose_times_are_not_numbers_never_stops_the_sweep(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A changelog record's last event, eviction time, approval expiry or reservation
    expiry that is text (or a list) read as a state, and the sweep's arithmetic on it raised
    a TypeError out of the worker's timer: the app crashed, and crashed again on the same
    record after every restart. Such a record is now unreadable: the sweep logs it and goes
    on (a good run beside it is still evicted on time), its events are dead letters."""
    good = RunState.new("run-good", "acme", NOW.timestamp())
    bad = orjson.loads(_parsed_run("run-bad").to_bytes())
    request = handoff("run-bad", 1, "t0").model_dump(mode="json")
    forgeries: list[dict[str, Any]] = [
        {**bad, "t": "soon"},
        {**bad, "ev": "x"},
        {**bad, "t0": [1]},
        {**bad, "res": [["q1", 1.0, 1, "later", None]]},
        {**bad, "pend": [[bad["keys"][0], request, {"at": 1}, 0.0]]},
        {**bad, "t": True},
    ]
    for forged in forgeries:
        store = _store()
        store._data[b"run-good"] = good.to_bytes()
        store._data[b"run-bad"] = orjson.dumps(forged)
        proc = BatchProcessor(policy_with(), PARTITIONS, store, worker="w")
        due = DueIndex(3600.0, 86400.0)
        due.rebuild_keys(list(store), NOW.timestamp())
        with caplog.at_level(logging.ERROR, logger="baton.processors.app"):
            _sweep(proc, due, NOW + timedelta(seconds=1))
            out = _sweep(proc, due, NOW + timedelta(seconds=3601))
        assert b"run-good" in out.changed, forged
        assert "stored state cannot be read" in caplog.text
        refused = proc.process([_record("run-bad", 9, handoff("run-bad", 9, "t9"))], NOW)
        assert [d.kind for d in refused.dead_letters] == ["state_unreadable"], forged


def test_a_forged_record_whose_approval_falls_due_never_stops_the_sweep(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run whose approval the sweep expires: a chain head, run id or spend of another type
    in its record (the expiry links and builds decisions from them) raised out of the sweep
    (AttributeError, TypeError), ending the worker at every restart. The sweep now works out
    a run's expiry and eviction before it changes anything, and a run it cannot work out is
    logged and left as it is; a good run's approval beside it still expires."""
    policy = policy_with(require_approval_for=["billing.*"])
    asked = BatchProcessor(policy, PARTITIONS, {}, chain_key=b"k")
    gated = {"action": "billing.refund.create", "event_time": NOW}
    asked.process(
        [
            _record("run-bad", 0, handoff("run-bad", 1, "t", **gated)),
            _record("run-good", 1, handoff("run-good", 1, "t", **gated)),
        ],
        NOW,
    )
    wire = orjson.loads(asked.states[b"run-bad"].to_bytes())
    good = asked.states[b"run-good"].to_bytes()
    for field, value in [("ch", 5), ("ch", None), ("run", None), ("run", 7), ("usd", "x")]:
        store = _store()
        store._data[b"run-good"] = good
        store._data[b"run-bad"] = orjson.dumps({**wire, field: value})
        proc = BatchProcessor(policy, PARTITIONS, store, worker="w", chain_key=b"k")
        due = DueIndex(3600.0, 86400.0)
        due.rebuild_keys(list(store), NOW.timestamp())
        with caplog.at_level(logging.ERROR, logger="baton.processors.app"):
            out = _sweep(proc, due, NOW + timedelta(days=1))
        assert [d.run_id for _, d in out.decisions] == ["run-good"], (field, value)
        assert "cannot be swept" in caplog.text or "cannot be read" in caplog.text
