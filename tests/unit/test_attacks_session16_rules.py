"""Session 16's attack on rule_chain.py compiled (f49641d): mypyc checks its annotations at
run time, so a run-state record (the changelog: whoever can write to it) that puts another
type where a task's parent or an agent pair's bounces go raises ``TypeError`` there, where
the interpreter decided on the forged value.

What holds (both builds): nothing escapes the worker's batch step, and the compiled build
answers as the interpreted one or with a dead letter where that one decided (stricter, never
more open; compared in a subprocess when run compiled by tests/integration/test_compiled_core.py).

And such a record is refused as it is read (``state_unreadable``, as state_wire refuses a
forged count or depth since d3e0f58), in both builds. Before (H1's F2, session 16), the
interpreted build decided on it (a bounce count of 1.5 bounced 2.5 times, a parent ``false``
was no parent; a count "1" was an ``engine_error`` there too) and wrote it back, and the
compiled one gave ``engine_error`` ("a bug of ours") dead letters, more of them once
rule_chain.py was compiled (a parent ``false``, ``0`` or ``{}``, a bounce's giver not text).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.compiled import compiled_modules
from tests.unit.test_compiled_worker_batch import _interpreted, _Store
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
T = "2026-11-29T11:59:00+00:00"
POLICY = policy_with(
    max_bounces=1,
    detect_delegation_cycles=True,
    require_lineage=True,
    max_delegation_depth=6,
    release_ownership_on=["error"],
)


def _handoff(n: int, task: str, giver: str, taker: str, parent: str | None) -> dict[str, Any]:
    d = dict(type="handoff_requested", request_id=f"h{n}", run_id="run-1", task_id=task)
    d.update(from_agent=giver, to_agent=taker, event_time=T)
    if parent is not None:
        d["parent_task_id"] = parent
    return d


#: the run's history: t1 (bob's), t2 handed bob -> carol then released by her (its node kept,
#: owner ""), a cycle stopped; bounces rows [alice, bob, alice, 0], [bob, carol, bob, 0]
HISTORY = [
    _handoff(1, "t1", "alice", "bob", None),
    _handoff(2, "t2", "bob", "carol", "t1"),
    _handoff(3, "t3", "carol", "bob", "t2"),
    dict(type="handoff_completed", request_id="h2", run_id="run-1", task_id="t2", agent="carol")
    | dict(cost_usd=0.0, status="error", event_time=T),
]
#: handoffs the unforged record answers: allowed (the released t2 to erin under its parent,
#: a new task under bob's t1, the first agent's new task to bob: its pair's bounces and the
#: loop through carol read), and a cycle (bob hands t1's child back to alice)
PROBES = [
    _handoff(10, "t2", "bob", "erin", "t1"),
    _handoff(11, "t4", "bob", "dave", "t1"),
    _handoff(12, "t6", "alice", "bob", None),
    _handoff(13, "t7", "bob", "alice", "t1"),
]
#: (where in the record, the forged value)
FORGED: list[tuple[tuple[Any, ...], Any]] = [
    *((("bn", 0, 3), v) for v in (1.5, "1", None, True, False, -1, 2**70, [1])),
    *((("bn", 1, 2), v) for v in (1.5, None, 7, ["bob"])),
    *((("bn", 0, 0), v) for v in (None, 3)),
    *((("tasks", 0, 3), v) for v in (False, 0, 0.0, {}, [], 5, 1.5, True, ["t0"])),
    *((("tasks", 1, 3), v) for v in (False, 0, 7, {"t1": 1})),
]


def _record() -> bytes:
    states = _Store()
    proc = BatchProcessor(POLICY, 1, states, worker="w")
    sent = [
        InputRecord("gov.handoff.requests", 0, i + 1, b"run-1", orjson.dumps(d))
        for i, d in enumerate(HISTORY)
    ]
    proc.process(sent, NOW)
    return dict.__getitem__(states, b"run-1").to_bytes()  # type: ignore[no-any-return]


def _forge(raw: bytes, where: tuple[Any, ...], value: Any) -> bytes:
    w = orjson.loads(raw)
    held = w
    for step in where[:-1]:
        held = held[step]
    held[where[-1]] = value
    return json.dumps(w).encode()


def _answer(raw: bytes, probe: dict[str, Any]) -> list[Any]:
    states = _Store()
    states[b"run-1"] = raw
    proc = BatchProcessor(POLICY, 1, states, worker="w")
    rec = InputRecord("gov.handoff.requests", 0, 100, b"run-1", orjson.dumps(probe))
    try:
        out = proc.process([rec], NOW + timedelta(seconds=5))
    except BaseException as exc:  # what the test looks for
        return ["escaped", type(exc).__name__, str(exc)[:300]]
    return [
        [[str(d.outcome), str(d.reason)] for _, d in out.decisions],
        [dl.kind for dl in out.dead_letters],
    ]


def _cases(seeds: range, forge: bool) -> list[Any]:
    """Every forged record's answers to every probe (``seeds``/``forge``: the signature
    test_compiled_worker_batch._interpreted calls; all cases are answered)."""
    raw = _record()
    return [[_answer(_forge(raw, w, v), p) for p in PROBES] for w, v in FORGED]


def test_the_unforged_record_allows_and_stops() -> None:
    answers = [_answer(_record(), p) for p in PROBES]
    assert answers == [
        [[["allow", "ok"]], []],
        [[["allow", "ok"]], []],
        [[["allow", "ok"]], []],
        [[["stop", "delegation_cycle"]], []],
    ]


def test_nothing_escapes_and_the_compiled_build_is_never_more_open() -> None:
    mine = json.loads(json.dumps(_cases(range(0), False)))
    assert not [a for case in mine for a in case if a[0] == "escaped"]
    if not compiled_modules():
        return  # the interpreted build: its side is this one (the compiled run compares)
    theirs = _interpreted(range(0), False, __name__)
    for (where, value), a, b in zip(FORGED, mine, theirs, strict=True):
        for compiled, interpreted in zip(a, b, strict=True):
            # the same answer, or a dead letter (no decision) where the interpreter decided
            assert compiled == interpreted or (not compiled[0] and compiled[1]), (where, value)


@pytest.mark.parametrize(("where", "value"), FORGED, ids=[f"{w}={v!r}"[:40] for w, v in FORGED])
def test_a_forged_parent_or_bounce_makes_the_record_unreadable(
    where: tuple[Any, ...], value: Any
) -> None:
    raw = _forge(_record(), where, value)
    for probe in PROBES:
        assert _answer(raw, probe) == [[], ["state_unreadable"]]
