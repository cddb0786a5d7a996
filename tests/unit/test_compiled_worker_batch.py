"""The worker's batch step under hostile records gives the compiled build's answers the
interpreted build gives: mypyc checks annotations at run time, so a value an annotation does
not allow raises ``TypeError`` where the interpreter took it. Run against the compiled build
by tests/integration/test_compiled_core.py (CORE_TESTS); there the interpreted side is a
subprocess of the editable install (``PYTHONPATH`` this checkout's root, which holds no
``baton`` folder), so the two builds decide the same seeded records side by side.

The records: valid events with hostile values (numbers at and past their bounds, floats
nan/inf/1e308/5e-324, deep and wide JSON, wrong types in every field, bytes that are not
UTF-8, 60 KB strings, keys that are not the run id, redeliveries, approvals of pending
approvals by approvers listed and not); then runs restored from changelog records, some
forged (a field of the wrong type, another version's positional record). Events alone: the
same decisions, dead letters, forwards and state bytes. Forged records: the compiled build
may refuse a record the interpreted one reads (``state_unreadable``: session 11's F5/F6,
stricter), never decide more, and nothing escapes the batch step in either build.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.batch_routing import FORWARDED_FROM
from baton.processors.compiled import compiled_modules
from baton.processors.state import RunState
from baton.schemas.policy import load_policy
from baton.streams.partitioner import partition_for
from tests.commit_tree import REPO
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
T = "2026-11-29T11:59:00+00:00"
TYPES = (
    "handoff_requested",
    "handoff_completed",
    "approval_granted",
    "approval_denied",
    "run_finished",
)
HOSTILE: tuple[Any, ...] = (
    2**63, 2**63 - 1, 2**64, -(2**63), 10**30, -1, 0, 1e308, -1e308, 1e-320, -0.0, 0.5, True,
    False, None, "", "x" * 60_000, "é" * 300, "a\x00b", [], [1, 2], {}, {"a": {"b": {"c": [1]}}},
    [[[[[[[[[[[]]]]]]]]]]], "1", "nan", 1.0, 3, T, 9.999999999e15, 2**53 + 1,
)  # fmt: skip
#: values at a field's bounds that the schema takes (or just refuses)
EDGE: dict[str, tuple[Any, ...]] = {
    "money": (1_000_000.0, 1_000_000, 999_999.999999, 5e-324, 1e-300, 0, 0.0, 2, 123456.789),
    "count": (1_000_000, 0, 999_999, 1, 7),
    "name": ("A" * 256, "Planner", "PLANNER", "résumé", "ǅ", "a.b.c", "İ", "ß", "ﬃ", "Ω"),
    "id": ("r" * 256, "é" * 128, "a", "h:x", "0", "\u2028"),
    "time": (
        "2000-01-01T00:00:00+00:00", "2199-12-31T23:59:59.999999+00:00", "2026-11-29T11:59:00Z",
        "2026-11-29T12:00:00.000001+00:00", "2026-11-29T13:59:00+02:00", 1795953540, 1795953540.5,
        "2026-11-29 11:59:00+00:00",
    ),
    "tools": (["t"] * 64, [f"t{i}" for i in range(64)], [], ["Search", "search"], ["a" * 256]),
}  # fmt: skip
FIELDS = {
    **dict.fromkeys(("estimated_usd", "cost_usd"), "money"),
    **dict.fromkeys(("estimated_tool_calls", "tool_calls", "steps"), "count"),
    **dict.fromkeys(("from_agent", "to_agent", "agent", "action", "tenant", "approver"), "name"),
    **dict.fromkeys(("request_id", "task_id", "parent_task_id", "approval_id", "comment"), "id"),
    **dict.fromkeys(("event_time", "decide_by"), "time"),
    "tools": "tools",
}


def _event(rng: random.Random, kind: str, run: str, n: int) -> dict[str, Any]:
    if kind == "handoff_requested":
        d: dict[str, Any] = dict(
            type=kind, request_id=f"{run}-h{n}", run_id=run, task_id=rng.choice(["t1", "t2"]),
            from_agent="planner", to_agent=rng.choice(["researcher", "writer"]), event_time=T,
        )  # fmt: skip
        for field, value, p in (
            ("estimated_usd", rng.choice([0.1, 1, 5.5, 100]), 0.5),
            ("tools", ["search"], 0.3),
            ("action", "billing.refund.create", 0.3),
            ("decide_by", "2026-11-29T12:05:00+00:00", 0.2),
        ):
            if rng.random() < p:
                d[field] = value
        return d
    if kind == "handoff_completed":
        return dict(
            type=kind, request_id=f"{run}-h{rng.randint(1, n)}", run_id=run, task_id="t1",
            agent="researcher", cost_usd=rng.choice([0.1, 2, 50]), tool_calls=rng.randint(0, 5),
            steps=rng.randint(0, 5), event_time=T,
        )  # fmt: skip
    if kind.startswith("approval"):
        return dict(type=kind, approval_id=f"{run}-h1", run_id=run, approver="boss", event_time=T)
    return dict(type=kind, run_id=run, event_time=T)


def _hostile(rng: random.Random) -> Any:
    if rng.random() < 0.7:
        return rng.choice(HOSTILE)
    return rng.choice([rng.randint(-(2**70), 2**70), rng.uniform(-1e300, 1e300), "y" * 300])


def _mutate(rng: random.Random, d: dict[str, Any]) -> dict[str, Any]:
    if rng.random() < 0.5:
        for _ in range(rng.randint(1, 3)):
            field = rng.choice(list(FIELDS))
            d[field] = rng.choice(EDGE[FIELDS[field]])
    elif rng.random() < 0.8:
        d[rng.choice([*d, "estimated_usd", "tools", "tenant", "signature", "zzz"])] = _hostile(rng)
    else:
        d = {k: _hostile(rng) if rng.random() < 0.3 else v for k, v in d.items()}
    return d


def _encode(rng: random.Random, d: dict[str, Any]) -> bytes:
    try:
        raw = orjson.dumps(d)
    except TypeError:  # an int past 64 bits
        raw = json.dumps(d).encode()
    r = rng.random()
    if r < 0.03:
        return raw[:-3] + b"\xff\xfe}"  # not UTF-8
    if r < 0.05:
        return raw.replace(b"0.1", b"NaN", 1)
    if r < 0.07:
        return raw.replace(b'"run_id"', b'"run_id":1e400,"x"', 1)
    return raw


class _Store(dict[bytes, Any]):
    """processors.faust_adapter.RunStore's reads: a restored record decoded on first access."""

    def get(self, key: bytes, default: Any = None) -> Any:
        value = dict.get(self, key)
        if isinstance(value, bytes):
            value = self[key] = RunState.from_record(key, value)
        return default if value is None else value


def _forge(rng: random.Random, raw: bytes) -> bytes:
    """``raw``, a run's changelog record, with one or two values of the wrong type."""
    w = orjson.loads(raw)
    if type(w) is list:  # a positional record read back: written again as format 4
        return raw
    if rng.random() < 0.08:  # another version's positional record
        return orjson.dumps([rng.choice([1, 2, 3, 3.0, True, "3"]), *list(w.values())[1:]])
    for _ in range(rng.randint(1, 2)):
        k = rng.choice(list(w))
        v = w[k]
        if isinstance(v, list) and v and rng.random() < 0.6:
            row = v[rng.randrange(len(v))]
            if isinstance(row, list) and row:
                row[rng.randrange(len(row))] = _hostile(rng)
            else:
                v[rng.randrange(len(v))] = _hostile(rng)
        else:
            w[k] = _hostile(rng)
    try:
        return orjson.dumps(w)
    except TypeError:
        return json.dumps(w).encode()


def _headers(rng: random.Random, topic: str, parts: int) -> Any:
    """A record's headers as a consumer may give them: aiokafka gives a tuple of (name, value)
    tuples (Faust passes it on), confluent-kafka a list or None; a client's own header (a trace
    id), Baton's forward header naming a position (valid, of another topic, malformed, no
    value), or none. The compiled build once dead-lettered every record whose headers came as
    a tuple (engine_error: "list or None object expected"), the interpreted one decided it."""
    pool: list[tuple[str, Any]] = [
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        (FORWARDED_FROM, f"{topic}/{rng.randrange(parts)}/{rng.randrange(40)}".encode()),
        (FORWARDED_FROM, f"gov.approvals/{rng.randrange(parts)}/{rng.randrange(40)}".encode()),
        (
            FORWARDED_FROM,
            rng.choice([b"", b"x/y/z", b"\xff", b"t/-1/5", b"t/1/99999999999999999999"]),
        ),
        (FORWARDED_FROM, None),
        ("x" * 300, b"v" * 3000),
    ]
    chosen = [rng.choice(pool) for _ in range(rng.randint(0, 3))]
    return rng.choice([tuple, list])(chosen)


def _case(seed: int, forge: bool) -> list[Any]:
    """What the batch step makes of seed ``seed``'s batches: per batch its decisions, dead
    letters (kind, error), forwards and state bytes' digests, or the exception that escaped."""
    rng = random.Random(seed)
    if seed % 2:
        policy = policy_with(max_handoffs=3, shared_max_usd=5.0, max_steps=6)
    else:
        policy = load_policy(str(REPO / "policy.example.yaml"))
    parts = rng.choice([1, 1, 3])
    states = _Store()
    proc = BatchProcessor(
        policy, parts, states, worker="w", exactly_once=rng.random() < 0.5,
        run_state_max_bytes=rng.choice([256 * 1024, 4000]),
        approvals_topic=rng.choice([None, "gov.approvals"]),
    )  # fmt: skip
    runs = [f"run_{seed}_{i}" for i in range(3)] + ["é" * 10, "r" * 256]
    approvals: list[tuple[str, str]] = []
    sent: list[InputRecord] = []
    out: list[Any] = []
    for b in range(rng.randint(1, 4)):
        if forge and b and rng.random() < 0.5:  # a restart: runs restored, some forged
            for k in list(states):
                if rng.random() < 0.7:
                    held = dict.__getitem__(states, k)
                    raw = held if isinstance(held, bytes) else held.to_bytes()
                    states[k] = _forge(rng, raw) if rng.random() < 0.7 else raw
        records = []
        for _ in range(rng.randint(1, 8)):
            run, kind = rng.choice(runs), rng.choice(TYPES)
            d = _event(rng, kind, run, rng.randint(1, 4))
            if kind.startswith("approval") and approvals and rng.random() < 0.8:
                d["approval_id"], run = rng.choice(approvals)
                d["run_id"] = run
                d["approver"] = rng.choice(["oncall_a", "finance_b", "boss", "Oncall_A"])
            if rng.random() < 0.6:
                d = _mutate(rng, d)
            raw = _encode(rng, d)
            key = run.encode() if rng.random() < 0.85 else rng.choice([b"other", b"\xff", None])
            topic = "gov.handoff.requests"
            if kind.startswith("approval") and rng.random() < 0.8:
                topic = "gov.approvals"
            p = partition_for(key, parts) if key is not None and rng.random() < 0.9 else 0
            headers = _headers(rng, topic, parts) if rng.random() < 0.4 else None
            sent.append(InputRecord(topic, p, len(sent) + 1, key, raw, headers))
            records.append(sent[-1])
            if rng.random() < 0.12:  # Kafka delivers an earlier record again
                records.append(rng.choice(sent))
        try:
            o = proc.process(records, NOW + timedelta(seconds=b))
        except BaseException as exc:  # what the test is looking for
            out.append(["escaped", type(exc).__name__, str(exc)[:300]])
            break
        approvals += [(d.approval_id, d.run_id) for _, d in o.decisions if d.approval_id]
        out.append([
            [[p, d.run_id, d.outcome, d.reason, d.decision_id, d.chain_hash, d.detail,
              d.reemitted] for p, d in o.decisions],
            [[dl.kind, orjson.loads(dl.value).get("error", "")[:300]] for dl in o.dead_letters],
            [[f.partition, f.key.hex()] for f in o.forwards],
            {k.hex(): hashlib.sha256(v).hexdigest()[:16] for k, v in o.encoded.items()},
        ])  # fmt: skip
    return out


def _cases(seeds: range, forge: bool) -> list[Any]:
    return json.loads(json.dumps([_case(s, forge) for s in seeds], default=str))


def _interpreted(seeds: range, forge: bool, module: str = __name__) -> list[Any]:
    """The same seeds decided by the interpreted build (the editable install), in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0"}
    code = (
        f"import json; from {module} import _cases;"
        f"print(json.dumps(_cases(range({seeds.start}, {seeds.stop}), {forge})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, timeout=240
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert "/processors/engine.py" in _engine_file(env)  # the interpreted build answered
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _engine_file(env: dict[str, str]) -> str:
    code = "from baton.processors import engine; print(engine.__file__)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    ).stdout


def _escaped(results: list[Any]) -> list[Any]:
    return [(i, b) for i, r in enumerate(results) for b in r if b[0] == "escaped"]


EVENT_SEEDS = range(0, 160)
FORGED_SEEDS = range(1000, 1160)


def test_hostile_events_are_decided_alike_and_nothing_escapes() -> None:
    mine = _cases(EVENT_SEEDS, forge=False)
    assert _escaped(mine) == []
    kinds = {dl[0] for r in mine for b in r for dl in b[1]}
    outcomes = {d[2] for r in mine for b in r for d in b[0]}
    # the records reach every step: refusals of each kind, and decisions of each outcome
    assert {"out_of_range", "schema", "not_json", "key_mismatch", "missing_key"} <= kinds
    assert "engine_error" not in kinds, [dl for r in mine for b in r for dl in b[1]][:5]
    assert {"allow", "stop", "approval_required", "recorded"} <= outcomes
    if not compiled_modules():
        return  # the interpreted build: its side is this one (the compiled run compares)
    theirs = _interpreted(EVENT_SEEDS, forge=False)
    for seed, a, b in zip(EVENT_SEEDS, mine, theirs, strict=True):
        assert a == b, f"seed {seed}: compiled {str(a)[:1500]}\ninterpreted {str(b)[:1500]}"


def _first_difference(a: list[Any], b: list[Any]) -> tuple[Any, Any] | None:
    """The first batch the builds answer differently (the later batches' records depend on
    what each build decided, so only the first is compared)."""
    for x, y in zip(a, b, strict=True):
        if x != y:
            return x, y
    return None


def test_forged_changelog_records_are_refused_never_decided_more_openly() -> None:
    mine = _cases(FORGED_SEEDS, forge=True)
    assert _escaped(mine) == []
    unreadable = sum(dl[0] == "state_unreadable" for r in mine for b in r for dl in b[1])
    assert unreadable > 10  # forged records reached the restore path
    if not compiled_modules():
        return
    theirs = _interpreted(FORGED_SEEDS, forge=True)
    assert _escaped(theirs) == []
    for seed, a, b in zip(FORGED_SEEDS, mine, theirs, strict=True):
        diff = _first_difference(a, b)
        if diff is None:
            continue
        compiled, interpreted = diff
        where = f"seed {seed}: compiled {str(compiled)[:1500]}\ninterpreted {interpreted}"[:3000]
        allows = [sum(d[2] == "allow" for d in side[0]) for side in diff]
        assert allows[0] <= allows[1], where
        kinds = [[dl[0] for dl in side[1]] for side in diff]
        # an engine error the interpreted build does not make: a TypeError mypyc raised
        assert kinds[0].count("engine_error") <= kinds[1].count("engine_error"), where
