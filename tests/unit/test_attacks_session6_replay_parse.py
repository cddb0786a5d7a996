"""The sixth session's attack review of parse_event's by-type validation: the worker and
`baton replay` must accept and refuse exactly what the session's start (5676c40, the union
alone) did, field for field, for hostile bytes: checked against that commit's own schemas,
run in a subprocess of their own beside this tree's (one process each side, events in order,
as a worker reads them)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.commit_tree import commit_tree, refused_as_unknown, run_pickled, unknown_event_keys
from tests.unit.test_events_fast import BASES, WHEN  # one valid event of each run type

pytestmark = pytest.mark.unit

START = "5676c40"
REPO = Path(__file__).resolve().parents[2]
#: parse each case, in order, in one process: the event's class, repr, dump, value types, set
#: fields and JSON, or the refusal's kind and words, or any other exception (a bug either side)
RUNNER = """
import pickle, sys
from baton.schemas.events import EventError, parse_event
def one(raw, key):
    try:
        ev = parse_event(raw, key)
    except EventError as exc:
        return ("refused", exc.kind, str(exc))
    except BaseException as exc:
        return ("raised", type(exc).__name__, str(exc)[:500])
    dump = ev.model_dump()
    return ("event", type(ev).__name__, repr(ev), repr(dump), sorted(ev.model_fields_set),
            {k: type(v).__name__ for k, v in dump.items()}, ev.to_json())
cases = pickle.load(sys.stdin.buffer)
pickle.dump([one(raw, key) for raw, key in cases], sys.stdout.buffer)
"""
FIELDS = sorted(
    {f for base in BASES.values() for f in base}
    | {"tenant", "steps", "decide_by", "status", "parent_task_id", "task_kind", "action"}
    | {"tool", "estimated_tool_calls", "signature", "request_digest"}
)
VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 10**6, 10**6 + 1, 2**31, 2**63 - 1, -(2**63), 2**64,
    0.0, -0.0, 1.0, 3.0, 1e6, 1e6 + 0.01, 1e308, 5e-324,
    "", " ", "x" * 60_000, "a" * 257, "a" * 256, "a" * 64, "a" * 65, "Ｃｏｄｅｒ", "cod\u200ber",
    "раура", "İ", "ǅ", "ß", "ﷺ" * 20, "run-1", "run-2", WHEN, "2026-03-01T09:00:00Z",
    "2026-03-01T09:00:00", "2026-03-01T09:00:00.123456789+00:00", "2026-02-30T09:00:00Z",
    "1999-12-31T23:59:59Z", "2199-12-31T23:59:59.999999Z", "2200-01-01T00:00:00Z",
    "2026-03-01T09:00:00+05:30", "2026-03-01T09:00:00-00:00", "1772355600", 1772355600,
    1772355600.5, "2026-03-01", "handoff_requested", "ok", "\x00", "a\x00b", "CODER", "coder ",
    [], ["a"], ["a"] * 64, ["a"] * 65, ["x" * 300], [["n"]], ["a", 1], ["Ｓearch", "search"],
    {}, {"a": 1}, "\ud800",
]  # fmt: skip
TYPES: list[Any] = [
    *BASES, "kill_switch", "policy_updated", "Handoff_Requested", "HANDOFF_REQUESTED",
    " handoff_requested", "handoff_requested ", "handoff_requested\x00", "ｈandoff_requested",
    "handoff_requeſted", 7, 7.0, None, True, ["handoff_requested"], {"type": "run_finished"}, "",
]  # fmt: skip
EXTRA_KEYS = ["x", "Type", "TYPE", "type ", "run_Id", "__class__", "model_config", "_names", "ü"]
WHEN_B = b'2026-03-01T09:00:00Z"}'
KEYS = [None, b"run-1", b"run-2", b"\xff", b"run-1\xff", b""]
#: bytes a JSON encoder would not write, each a record an attacker can produce
HAND: list[tuple[bytes, bytes | None]] = [
    (b"", None),
    (b"null", None),
    (b"[]", None),
    (b"\xff\xfe", None),
    (b'{"type":"run_finished"}', None),
    (b'{"type":"run_finished","type":7}', None),
    (b'{"type":7,"type":"run_finished","run_id":"r","event_time":"2026-03-01T09:00:00Z"}', None),
    (b'{"type":"kill_switch","type":"run_finished","run_id":"r","event_time":"' + WHEN_B, None),
    (b'{"type":"kill_switch","run_id":"r","event_time":"' + WHEN_B, None),
    (b'{"type":"run_finished","run_id":"r","run_id":"s","event_time":"' + WHEN_B, b"r"),
    (b'{"type":"run_finished","run_id":"r","run_id":"s","event_time":"' + WHEN_B, b"s"),
    (b'{"type":"run_\\u0066inished","run_id":"r","event_time":"2026-03-01T09:00:00Z"}', None),
    (b'{"type":"run_finished","run_id":"r\\ud800","event_time":"2026-03-01T09:00:00Z"}', None),
    (b'{"type":"run_finished","run_id":"r\xff","event_time":"2026-03-01T09:00:00Z"}', None),
    (b'\xef\xbb\xbf{"type":"run_finished","run_id":"r","event_time":"2026-03-01T09:00:00Z"}', None),
    (b'{"type":"handoff_completed","request_id":"q","run_id":"r","task_id":"t","agent":"a",'
     b'"cost_usd":1e309,"event_time":"2026-03-01T09:00:00Z"}', None),
    (b'{"type":"handoff_completed","request_id":"q","run_id":"r","task_id":"t","agent":"a",'
     b'"cost_usd":-0.0,"tool_calls":3.0,"event_time":"2026-03-01T09:00:00Z"}', None),
    (b'{"type":"handoff_completed","request_id":"q","run_id":"r","task_id":"t","agent":"a",'
     b'"cost_usd":NaN,"event_time":"2026-03-01T09:00:00Z"}', None),
    (b'{"type":"handoff_completed","request_id":"q","run_id":"r","task_id":"t","agent":"a",'
     b'"tool_calls":1' + b"0" * 40 + b',"event_time":"2026-03-01T09:00:00Z"}', None),
    (b'{"type":"handoff_completed","request_id":"q","run_id":"r","task_id":"t","agent":"a",'
     b'"steps":99999999999999999999,"event_time":"2026-03-01T09:00:00Z"}', None),
    *[
        (b'{"type":"run_finished","run_id":"r","event_time":"2026-03-01T09:00:00Z","d":'
         + b"[" * depth + b"]" * depth + b"}", None)
        for depth in (100, 1023, 1024, 5000)
    ],
    *[  # nested where a name, a number, a time or the type is read
        (b'{"type":"handoff_requested","request_id":"r","run_id":"r","task_id":"t",'
         b'"from_agent":"p","to_agent":"c","event_time":"2026-03-01T09:00:00Z","'
         + field + b'":' + opened * 1020 + b"1" + closed * 1020 + b"}", None)
        for field in (b"tools", b"to_agent", b"estimated_usd", b"decide_by", b"type")
        for opened, closed in ((b"[", b"]"), (b'{"a":', b"}"))
    ],
    (b'{"type":"run_finished","run_id":"r","event_time":"2026-03-01T09:00:00Z","x":"'
     + b"y" * 66_000 + b'"}', None),
]  # fmt: skip


def _dumps(doc: dict[str, Any]) -> bytes:
    # ensure_ascii off and surrogates passed: a lone surrogate is bytes no UTF-8 encoder writes
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _hostile(rng: random.Random) -> list[tuple[bytes, bytes | None]]:
    """A valid event edited by a few hostile steps, then as bytes with keys duplicated."""
    doc = dict(BASES[rng.choice(sorted(BASES))])
    for _ in range(rng.randint(0, 5)):
        step = rng.choice(["set", "set", "drop", "extra", "type"])
        if step == "set":
            doc[rng.choice(FIELDS)] = rng.choice(VALUES)
        elif step == "drop" and doc:
            doc.pop(rng.choice(sorted(doc)))
        elif step == "extra":
            doc[rng.choice(EXTRA_KEYS)] = rng.choice(VALUES)
        else:
            doc["type"] = rng.choice(TYPES)
    raw = _dumps(doc)
    out = [raw]
    if rng.random() < 0.3 and len(raw) > 2:  # a key twice: the first or the last one wins?
        name = rng.choice(["type", "run_id", "cost_usd", "event_time", "to_agent", "tools"])
        value = json.dumps(rng.choice(TYPES[:20] + VALUES[:30]))
        out.append(b"{" + f'"{name}":{value},'.encode() + raw[1:])
        out.append(raw[:-1] + f',"{name}":{value}}}'.encode())
    return [(r, rng.choice(KEYS)) for r in out]


#: names that fold, refuse, expand (NFKC) or pass the event's non-ASCII budget, and values
#: that are no names: where the model's refusal must be worded as the union's
NAMES: list[Any] = [
    "coder", "CODER", "Ｃｏｄｅｒ", "cod\u200ber", "pаypal", "İ", "ǅ", "ß", "ﷺ" * 14, "ﷺ" * 15,
    "я" * 200, "я" * 256, "я" * 257, "x" * 257, "a b", "\x00", "a\x7f", "", "ア" * 100,
    "㌀" * 60, "e\u0301" * 50, "\ud800", "中a", "ωmega", "ﬀ" * 130, "🙂", "a*", None, 7, [],
]  # fmt: skip
NAME_FIELDS = {
    "handoff_requested": ["tenant", "task_kind", "from_agent", "to_agent", "action", "tool"],
    "handoff_completed": ["tenant", "agent", "status"],
    "approval_granted": ["tenant", "approver"],
    "approval_denied": ["tenant", "approver"],
    "run_finished": ["tenant"],
}


def _named(rng: random.Random) -> tuple[bytes, bytes | None]:
    """A valid event with hostile names in its name fields and tools, maybe a bad field."""
    kind = rng.choice(sorted(BASES))
    doc = dict(BASES[kind])
    fields = NAME_FIELDS[kind] + (["tools"] if kind.startswith("handoff") else [])
    for _ in range(rng.randint(1, 6)):
        field = rng.choice(fields)
        if field == "tools":
            doc[field] = [rng.choice(NAMES) for _ in range(rng.choice([1, 3, 10, 64, 65]))]
        else:
            doc[field] = rng.choice(NAMES)
    if rng.random() < 0.3:
        doc[rng.choice(["event_time", "cost_usd", "tool_calls", "run_id", "comment"])] = rng.choice(
            [-1, "x", None, 1e7, "2300-01-01T00:00:00Z", "y" * 2000, [1]]
        )
    return _dumps(doc), rng.choice([None, b"run-1"])


@pytest.fixture(scope="module")
def start_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The start commit's schemas as a ``baton`` package of their own (schemas import nothing
    else of ours), for PYTHONPATH."""
    return commit_tree(tmp_path_factory.mktemp("start"), START, ("schemas",))


def _parsed(cases: list[tuple[bytes, bytes | None]], pythonpath: str | None) -> list[Any]:
    env = {"PYTHONPATH": pythonpath} if pythonpath else {}
    return run_pickled(RUNNER, cases, env, timeout=120)  # type: ignore[no-any-return]


def _assert_same(cases: list[tuple[bytes, bytes | None]], start: Path) -> list[Any]:
    before, now = _parsed(cases, str(start)), _parsed(cases, None)
    # an event holding a key its type does not have is refused since session 27 (the start
    # read it with the key dropped); it is never read as an event now
    assert not [
        c for c, n in zip(cases, now, strict=True) if n[0] == "event" and unknown_event_keys(c[0])
    ]
    differ = [
        (c, b, n)
        for c, b, n in zip(cases, before, now, strict=True)
        if b != n and not refused_as_unknown(c[0], n)
    ]
    assert not differ, f"{len(differ)} of {len(cases)} differ; first: {differ[0]!r:.3000}"
    return now


def test_the_start_tree_is_the_union_alone_and_this_tree_the_by_type_models(
    start_tree: Path,
) -> None:
    # the comparison means something only if the two sides run different code
    probe = "import baton.schemas.events as e; print(e.__file__, hasattr(e, '_RUN_MODELS'))"
    sides = [
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, env=env, cwd="/", check=True
        ).stdout.split()
        for env in ({"PYTHONPATH": str(start_tree)}, {})
    ]
    assert sides[0][0].decode().startswith(str(start_tree)) and sides[0][1] == b"False"
    assert sides[1][1] == b"True"


def test_hand_made_hostile_bytes_parse_as_at_the_session_s_start(start_tree: Path) -> None:
    results = _assert_same(HAND, start_tree)
    # and the corpus reaches both sides' paths: events accepted, refusals of several kinds
    assert {r[0] for r in results} == {"event", "refused"}
    assert {r[1] for r in results if r[0] == "refused"} >= {
        "not_json", "schema", "out_of_range", "oversized", "key_mismatch", "unknown_type",
    }  # fmt: skip


def test_thousands_of_hostile_events_in_one_process_parse_as_at_the_start(
    start_tree: Path,
) -> None:
    # one process a side, in order: the name cache a worker warms is shared by every event
    rng = random.Random(20261130)
    cases = [case for _ in range(2_000) for case in _hostile(rng)]
    results = _assert_same(cases, start_tree)
    accepted = {r[1] for r in results if r[0] == "event"}
    assert accepted == {"HandoffRequested", "HandoffCompleted", "ApprovalGranted"} | {
        "ApprovalDenied", "RunFinished",
    }  # fmt: skip


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(50, 300))
def test_hypothesis_drawn_hostile_batches_parse_as_at_the_start(
    start_tree: Path, rng: random.Random, size: int
) -> None:
    _assert_same([case for _ in range(size) for case in _hostile(rng)], start_tree)


def test_hostile_names_are_refused_in_the_same_kind_and_words_as_at_the_start(
    start_tree: Path,
) -> None:
    rng = random.Random(1130)
    results = _assert_same([_named(rng) for _ in range(1_500)], start_tree)
    assert sum(r[:2] == ("refused", "bad_name") for r in results) > 500
    assert any(r[:2] == ("refused", "out_of_range") for r in results)
