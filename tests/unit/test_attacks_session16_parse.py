"""Session 16's attack on the one-call input read (f49641d): ``parse_event`` now tries the
compiled ``event_fast.fast_parse`` first and ``processors.replay._input_event`` reads a
recorded input through it, checking the run's key itself. Hand-written hostile inputs
(duplicate keys, escapes, NFKC and surrogate run ids, control events, wrong JSON types, bools
for counts, values at their bounds, 60 KB strings, the size bound, bytes not UTF-8, deep
nesting) give the answers 8846ff4 (the commit before) gave, with the fast path on: the same
event down to each value's type and the fields set, or the same refusal (kind and words),
under no key, the run's own, another's and one not UTF-8; and a recorded text (audit input)
reads as ``parse_event(text.encode(), key)`` read it there. In the compiled build (run by
tests/integration/test_compiled_core.py when listed in CORE_TESTS) this side is compiled.

H1's corpus of 17,940 inputs found no difference in any of the four builds (interpreted and
compiled, 8846ff4 and f49641d: /tmp/l16/H1_findings.md); this keeps the hand-written part.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton.processors import replay
from baton.schemas import events
from baton.schemas.events import MAX_EVENT_BYTES, EventError, parse_event
from tests.commit_tree import REPO, commit_tree, refused_as_unknown, run_pickled, unknown_event_keys

pytestmark = pytest.mark.unit

#: the commit before the one-call read
BEFORE = "8846ff4"
W = "2026-03-01T09:00:00+00:00"
_H = '{"type":"handoff_requested","request_id":"h","run_id":"run-1","task_id":"t","from_agent":"a"'


def _rf(extra: str = "", run: str = "run-1") -> str:
    return '{"type":"run_finished","run_id":"' + run + '","event_time":"' + W + '"' + extra + "}"


def _h(extra: str) -> str:
    return _H + "," + extra + ',"event_time":"' + W + '"}'


INPUTS: list[bytes] = [
    s.encode("utf-8", "surrogatepass")
    for s in [
        _rf(),
        _rf(',"run_id":"run-2"'),  # duplicate keys: the last wins, in both readers
        '{"run_id":"run-2",' + _rf()[1:],
        _rf(',"type":"kill_switch"'),
        _rf(',"type":"handoff_requested"'),
        _rf(',"event_time":"x"'),
        '{"type":"run_finished","run_id":"run-1","event_time":"x","event_time":"' + W + '"}',
        _rf(run="run\\u002d1"),
        _rf(run="ｒｕｎ-1"),
        _rf(run="run-1\\u0000"),
        _rf(run="\\ud800"),
        _rf(run="\\udc80\\ud800"),
        _rf(run="\\ud83d\\ude00"),
        _rf(run="r" * 256),
        _rf(run="r" * 257),
        _rf(run="é" * 256),
        _rf(run="é" * 257),
        _rf(run="\\u00e9" * 256),
        _rf(run="😀" * 257),
        _rf() + " ",
        "\ufeff" + _rf(),
        _rf() + "{}",
        _rf() + "\x00",
        _rf(',"x":1e400'),
        _rf(',"x":-Infinity'),
        _rf(',"x":NaN'),
        _rf(',"x":99999999999999999999999'),
        _rf(',"x":' + "[" * 1024 + "]" * 1024),
        _rf(',"x":' + "[" * 1025 + "]" * 1025),
        _rf(',"x":"' + "y" * 60_000 + '"'),
        '{"type":"run_finished","run_id":1,"event_time":"' + W + '"}',
        '{"type":"run_finished","run_id":true,"event_time":"' + W + '"}',
        '{"type":"run_finished","run_id":null,"event_time":"' + W + '"}',
        '{"type":"run_finished","run_id":["run-1"],"event_time":"' + W + '"}',
        '{"type":"run_finished","run_id":{"a":1},"event_time":"' + W + '"}',
        '{"type":"run_finished","run_id":"run-1","event_time":1772355600}',
        '{"type":"run_finished","run_id":"run-1","event_time":true}',
        '{"type":"run_finished","run_id":"run-1","event_time":"2026-03-01T09:00:00.000000+00:00"}',
        '{"type":["run_finished"],"run_id":"run-1","event_time":"' + W + '"}',
        '{"type":"Run_Finished","run_id":"run-1","event_time":"' + W + '"}',
        '{"type":"run_finishe\\u0064","run_id":"run-1","event_time":"' + W + '"}',
        '{"type":"kill_switch","scope":"global","event_time":"' + W + '"}',
        '{"type":"policy_updated","yaml":"x","event_time":"' + W + '"}',
        '{"type":null}',
        '{"type":"run_finished"}',
        "{}",
        "[]",
        '"x"',
        "1",
        "null",
        "",
        _rf()[:-1],
        _h('"to_agent":"b","estimated_usd":1000000,"estimated_tool_calls":1000000'),
        _h('"to_agent":"b","estimated_usd":1000000.0000001'),
        _h('"to_agent":"b","estimated_tool_calls":1000001'),
        _h('"to_agent":"b","estimated_tool_calls":true'),
        _h('"to_agent":"b","estimated_tool_calls":1.0'),
        _h('"to_agent":"b","estimated_usd":true'),
        _h('"to_agent":"b","estimated_usd":-0.0'),
        _h('"to_agent":"b","estimated_usd":18446744073709551616'),
        _h('"to_agent":"ａ"'),
        _h('"to_agent":"\\u0041"'),
        _h('"to_agent":"A","to_agent":"b"'),
        _h('"to_agent":"b","parent_task_id":false'),
        _h('"to_agent":"b","parent_task_id":""'),
        _h('"to_agent":"b","tools":["x","X","\\u0058"]'),
        _h('"to_agent":"b","tools":' + json.dumps(["t"] * 65)),
        _h('"to_agent":"b","tools":' + json.dumps(["t"] * 64)),
        _h('"to_agent":"b","decide_by":"9999-12-31T23:59:59.999999+00:00"'),
    ]
]
_PAD = len(_rf()) + 7  # the bytes around the padding: the first of each three is one too many
INPUTS += [
    _rf(',"p":"' + "z" * (MAX_EVENT_BYTES - _PAD - d) + '"').encode() for d in (-1, 0, 1)
] + [_rf(',"p":"' + "é" * ((MAX_EVENT_BYTES - _PAD) // 2 - d) + '"').encode() for d in (-1, 0, 1)]
INPUTS += [
    _rf(',"x":"\xff"').encode("latin-1"),
    b'{"type":"run_finished","run_id":"run-\xff","event_time":"' + W.encode() + b'"}',
    b'{"type":"run_finished","run_id":"run-\xed\xa0\x80","event_time":"' + W.encode() + b'"}',
]


def _shown(event: Any) -> list[Any]:
    d = event.__dict__
    return [
        type(event).__name__,
        repr(list(d.items())),
        [type(v).__name__ for v in d.values()],
        [type(x).__name__ for v in d.values() if isinstance(v, list) for x in v],
        sorted(event.model_fields_set),
        object.__getattribute__(event, "__pydantic_extra__"),
    ]


def _answer(read: Any) -> Any:
    try:
        return _shown(read())
    except EventError as exc:
        return ["refused", exc.kind, str(exc)]
    except Exception as exc:  # (text.encode() of a surrogate: replay's "replay failed")
        return ["raised", type(exc).__name__, str(exc)[:300]]


def _answers(inputs: list[bytes]) -> list[list[Any]]:
    """Every input's answers in this process's build, with the fast path on (as compiled)."""
    kept = dict(events._FAST)
    events._FAST.update(events._FAST_SPECS)  # in place: replay's name for it is this dict
    try:
        out = []
        for raw in inputs:
            keys = [b"run-1", b"other", b"\xff", b""]
            row = [_answer(lambda k=k, r=raw: parse_event(r, k)) for k in [None, *keys]]
            text = raw.decode("utf-8", "surrogateescape")
            for k in keys:
                if hasattr(replay, "_input_event"):
                    row.append(_answer(lambda k=k, t=text: replay._input_event(t, k)))
                else:
                    row.append(_answer(lambda k=k, t=text: parse_event(t.encode(), k)))
            out.append(row)
        return out
    finally:
        events._FAST.clear()
        events._FAST.update(kept)


RUNNER = """
import pickle, sys
from tests.unit.test_attacks_session16_parse import _answers
sys.stdout.buffer.write(pickle.dumps(_answers(pickle.loads(sys.stdin.buffer.read()))))
"""


@pytest.fixture(scope="module")
def before_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield commit_tree(tmp_path_factory.mktemp("before16"), BEFORE)


def test_hostile_inputs_read_as_before_the_one_call_read(before_tree: Path) -> None:
    now = _answers(INPUTS)
    then = run_pickled(RUNNER, INPUTS, {"PYTHONPATH": str(before_tree)}, cwd=REPO)
    assert len(now) == len(then) == len(INPUTS)
    # an event holding a key its type does not have is refused since session 27 (the commit
    # before read it with the key dropped); it is never read as an event now
    for raw, row in zip(INPUTS, now, strict=True):
        assert not unknown_event_keys(raw) or all(a[0] in ("refused", "raised") for a in row)
    differ = [
        i
        for i, (a, b) in enumerate(zip(now, then, strict=True))
        if a != b
        and not all(x == y or refused_as_unknown(INPUTS[i], x) for x, y in zip(a, b, strict=True))
    ]
    assert not differ, f"{INPUTS[differ[0]][:200]!r}:\n{now[differ[0]]}\n{then[differ[0]]}"
    kinds = {a[1] for row in now for a in row if a[0] == "refused"}
    assert {"key_mismatch", "not_json", "schema", "oversized", "unknown_type"} <= kinds
    assert sum(1 for row in now for a in row if a[0] == "RunFinished") > 10  # events too


def test_the_fast_event_of_another_run_is_never_replay_s() -> None:
    """A recorded input the fast path builds but that names another run (a forged audit row,
    or an input whose run_id differs from its row's only by an escape or a fold) is refused
    key_mismatch, never replayed as the run's."""
    kept = dict(events._FAST)
    events._FAST.update(events._FAST_SPECS)
    try:
        for text, key in [
            (_rf(run="run-2"), b"run-1"),
            (_rf(run="run-1"), b"run-1 "),
            (_rf(run="run-1"), "ｒｕｎ-1".encode()),
            (_rf(run="RUN-1"), b"run-1"),
            (_rf(run="run-1"), b"run-\xff"),
        ]:
            with pytest.raises(EventError) as refused:
                replay._input_event(text, key)
            assert refused.value.kind == "key_mismatch"
    finally:
        events._FAST.clear()
        events._FAST.update(kept)
