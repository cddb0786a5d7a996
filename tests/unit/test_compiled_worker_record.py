"""A forged changelog record is read alike by both builds: every field of a run's record (a
live run with every kind of row, the same with unlinked replies, a tombstone, an old format's
positional record) set to values of the wrong type, restored, then decided on and swept,
gives the compiled build's outputs byte for byte what the interpreted build gives
(decisions, dead letters with their errors, state bytes). A compiled RunState or Decision
checked a value's type where it stored it (a ``TypeError`` in its own words, an int time held
as a float and written back so) where the interpreted one held the value and decided on it:
a fleet mixing the two builds decided such a run apart. processors/state_row_checks.py
(``map_checked``) and processors/state_rows.py (a reply row's columns) check them at the
read, in both builds alike (``state_unreadable``).

Run against the compiled build by tests/integration/test_compiled_core.py (CORE_TESTS); the
interpreted side is a subprocess importing this checkout's own folders (a ``baton`` of
symlinks to them: the editable install's code when this checkout is the one installed).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.compiled import compiled_modules
from baton.processors.engine import NO_KILLS
from baton.processors.state import RunState
from baton.processors.sweep import DueIndex
from baton.processors.sweep_step import sweep_due
from baton.schemas.policy import parse_policy
from tests.commit_tree import REPO, SOURCE_FOLDERS
from tests.unit import test_compiled_worker_batch as hostile
from tests.unit.test_state_format import FORMAT_3_STATE as FORMAT_3

pytestmark = pytest.mark.unit

NOW = hostile.NOW
HOSTILE: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 1.5, 1.0, 2**63, 1e20, 1e308, "x", "", "1", [], {}, ["a"],
    [1], hostile.T,
)  # fmt: skip
REQ, APPROVALS = "gov.handoff.requests", "gov.approvals"


def _policy() -> Any:
    doc = yaml.safe_load((REPO / "policy.example.yaml").read_text())
    doc["multi_agent"].update(max_agents_per_run=50, max_handoffs=500, max_bounces=50)
    return parse_policy(yaml.safe_dump(doc), "record")


def _event(kind: str, rid: str, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"type": kind, "run_id": "run-1", "event_time": hostile.T}
    if kind == "handoff_requested":
        d.update(request_id=rid, task_id="t1", from_agent="planner", to_agent="researcher")
    elif kind == "handoff_completed":
        d.update(request_id=rid, task_id="t1", agent="researcher", cost_usd=1.0, tool_calls=1)
        d.update(steps=1)
    elif kind == "approval_granted":
        d.update(approval_id=rid, approver="oncall_a")
    d.update(kw)
    return d


def _records(events: list[dict[str, Any]], first: int) -> list[InputRecord]:
    return [
        InputRecord(
            APPROVALS if e["type"] == "approval_granted" else REQ,
            0,
            first + i,
            b"run-1",
            orjson.dumps(e),
        )
        for i, e in enumerate(events)
    ]


def _bases() -> dict[str, dict[str, Any]]:
    """A run's record with a task tree, agents, a reservation, a pending approval, a grant,
    bounces, kept replies and a life; the same with unlinked replies; its tombstone."""
    states = hostile._Store()
    proc = BatchProcessor(_policy(), 1, states, worker="w")
    refund = dict(to_agent="billing_agent", action="billing.refund.create")
    proc.process(_records([
        _event("handoff_requested", "h1", estimated_usd=1.5, estimated_tool_calls=2),
        _event("handoff_completed", "h1"),
        _event("handoff_requested", "h2", task_id="t2", to_agent="writer", estimated_usd=2.0),
        _event("handoff_requested", "h3", task_id="refund_1", **refund),
        _event("handoff_requested", "h4", task_id="refund_2", **refund),
        _event("handoff_requested", "h5", task_id="t5", from_agent="researcher", to_agent="writer"),
    ], 1), NOW)  # fmt: skip
    pending = orjson.loads(states[b"run-1"].to_bytes())["pend"]
    grant = _event("approval_granted", pending[0][0])
    proc.process(_records([grant], 7), NOW + timedelta(seconds=1))
    raw = states[b"run-1"].to_bytes()
    live = orjson.loads(raw)
    unlinked = copy.deepcopy(live)
    for _key, rows in unlinked["rec"]:
        for row in rows:
            row[-3] = None  # chain_hash
    tomb = orjson.loads(RunState.from_bytes(raw).tombstone(NOW.timestamp() + 100).to_bytes())
    return {"live": live, "unlinked": unlinked, "tomb": tomb, "format3": orjson.loads(FORMAT_3)}


def _paths(w: Any) -> list[tuple[Any, ...]]:
    """Every field to forge: each key (a format 1-3 record's position), each column of its
    first row (a pending approval's request's fields), each column of the first two replies'
    first rows (the second's is sent again: re-emitted)."""
    out: list[tuple[Any, ...]] = []
    for k, v in w.items() if type(w) is dict else list(enumerate(w))[1:]:
        out.append((k,))
        if type(v) is not list or not v:
            continue
        if k in ("rec", 15):
            out += [(k, 0, 0), (k, 0, 1)]
            out += [(k, e, 1, 0, c) for e in (0, 1) for c in range(len(v[0][1][0]))]
        elif type(v[0]) is list:
            for c, value in enumerate(v[0]):
                out.append((k, 0, c))
                if type(value) is dict:
                    out += [(k, 0, c, f) for f in value]
        else:
            out.append((k, 0))
    return out


def _after(pending: str) -> list[list[InputRecord]]:
    """The batches after the restore: a redelivered request (its kept reply re-emitted), the
    reservation's and the grant's completions, the approval, new handoffs, the run's end."""
    h2 = _event("handoff_requested", "h2", task_id="t2", to_agent="writer", estimated_usd=2.0)
    return [
        _records([h2, _event("handoff_completed", "h2", task_id="t2", agent="writer"),
                  _event("handoff_completed", "h3", task_id="refund_1", agent="billing_agent")],
                 10),
        _records([_event("approval_granted", pending),
                  _event("handoff_requested", "h6", task_id="t6", estimated_usd=0.5)], 20),
        _records([_event("handoff_requested", f"h{i}", task_id=f"t{i}") for i in range(7, 11)],
                 30),
        _records([h2, _event("run_finished", "")], 40),
    ]  # fmt: skip


def _outputs(o: Any) -> list[Any]:
    return [
        [[p, d.to_json().decode()] for p, d in o.decisions],
        [[dl.kind, dl.value.decode()] for dl in o.dead_letters],
        {k.hex(): hashlib.sha256(v).hexdigest()[:16] for k, v in o.encoded.items()},
    ]


def _case(raw: bytes, pending: str, exactly_once: bool) -> list[Any]:
    states = hostile._Store({b"run-1": raw})
    proc = BatchProcessor(_policy(), 1, states, worker="w", exactly_once=exactly_once)
    out: list[Any] = []
    try:
        for b, batch in enumerate(_after(pending)):
            out.append(_outputs(proc.process(batch, NOW + timedelta(seconds=b))))
        due = DueIndex(3600, 7200)
        due.rebuild_keys(list(states), NOW.timestamp())
        for s in (10, 600, 4000, 90000):
            out.append(_outputs(sweep_due(
                proc, due, NOW + timedelta(seconds=s), active={0}, ready={0}, kills=NO_KILLS,
                run_retention_s=3600, tombstone_retention_s=7200, limit=100,
            )))  # fmt: skip
    except Exception as exc:  # what the test is looking for
        out.append(["escaped", type(exc).__name__, str(exc)[:300]])
    return out


def _cases(seeds: range) -> list[Any]:
    """Per seed, per base record, per field: one wrong value (drawn from HOSTILE) there."""
    bases = _bases()
    pending = bases["live"]["pend"][0][0]
    out = []
    for seed in seeds:
        rng = random.Random(seed)
        for name, base in bases.items():
            for path in _paths(base):
                w = copy.deepcopy(base)
                value = rng.choice(HOSTILE)
                held = w
                for step in path[:-1]:
                    held = held[step]
                held[path[-1]] = value
                try:
                    raw = orjson.dumps(w)
                except TypeError:  # an int past 64 bits
                    raw = json.dumps(w).encode()
                where = f"{name}/{'.'.join(map(str, path))}={value!r}"[:120]
                out.append([where, _case(raw, pending, rng.random() < 0.3)])
    return json.loads(json.dumps(out, default=str))


def _interpreted(seeds: range, tmp: Path) -> list[Any]:
    """The same seeds by the interpreted build of this checkout, in a subprocess."""
    (tmp / "baton").mkdir()
    (tmp / "baton" / "__init__.py").write_text("")
    for folder in SOURCE_FOLDERS:
        (tmp / "baton" / folder).symlink_to(REPO / folder)
    env = {**os.environ, "PYTHONPATH": str(tmp), "PYTHONHASHSEED": "0"}
    code = (
        "import json; from baton.processors import engine; print(engine.__file__);"
        "from tests.unit.test_compiled_worker_record import _cases;"
        f"print(json.dumps(_cases(range({seeds.start}, {seeds.stop}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, timeout=240
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    engine_file, results = done.stdout.decode().split("\n", 1)
    assert engine_file == str(tmp / "baton" / "processors" / "engine.py")  # interpreted
    return json.loads(results)  # type: ignore[no-any-return]


SEEDS = range(0, 1)


def test_forged_changelog_records_are_read_alike_by_both_builds(tmp_path: Path) -> None:
    mine = _cases(SEEDS)
    assert [c for c in mine if c[1] and c[1][-1][0] == "escaped"] == []
    refused = [c for c in mine if any(dl[0] == "state_unreadable" for dl in c[1][0][1])]
    decided = [c for c in mine if c[1][0][0]]
    # the forged fields reach both answers: refused records, and records decided on
    assert len(refused) > 100 and len(decided) > 40, (len(refused), len(decided))
    if not compiled_modules():
        return  # the interpreted build: its side is this one (the compiled run compares)
    theirs = _interpreted(SEEDS, tmp_path)
    assert [c[0] for c in mine] == [c[0] for c in theirs]
    differ = [(a[0], a[1], b[1]) for a, b in zip(mine, theirs, strict=True) if a != b]
    assert not differ, (
        f"{len(differ)} of {len(mine)} records read apart; the first: {differ[0][0]}\n"
        f"compiled {str(differ[0][1])[:1500]}\ninterpreted {str(differ[0][2])[:1500]}"
    )
