"""A changelog record's request digests (``dg``, one per dedup key) are read only as text or
null (session 16, H3's F-H3-1): a forged record holding another value there (a bool, a number,
a list, a map) is refused as it is read (``ValueError``: the batch step answers the run's events
``state_unreadable``) in the interpreted build as in the compiled one. Before, the interpreted
worker read it, allowed the run's next handoff and wrote the odd digest back; the compiled one
read it and failed writing the run's next record (an ``engine_error`` dead letter: "a bug of
ours"), when the run's marks went past its fresh window."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from baton.processors.state import RunState
from tests.unit.test_engine_support import Run


def _record() -> dict[str, Any]:
    run = Run()
    first = run.handoff("t1", "planner", "researcher")
    run.complete(first, cost_usd=0.5)
    run.handoff("t2", "planner", "coder")
    assert run.state is not None
    w = orjson.loads(run.state.to_bytes())
    assert isinstance(w, dict) and len(w["dg"]) == len(w["keys"]) >= 2, w
    return w


def _read(w: dict[str, Any]) -> RunState:
    return RunState.from_record(w["run"].encode(), orjson.dumps(w))


def test_text_and_null_digests_read_back_as_written() -> None:
    w = _record()
    assert _read(w).to_bytes() == orjson.dumps(w)
    w["dg"][0] = None  # a key without its digest: a format before digests were kept
    assert orjson.loads(_read(w).to_bytes())["dg"][0] is None


@pytest.mark.parametrize("value", [True, False, 7, 1.5, [1], {"a": "b"}, ""])
@pytest.mark.parametrize("marks", [None, 511])
def test_a_digest_that_is_not_text_makes_the_record_unreadable(value: Any, marks: Any) -> None:
    w = _record()
    w["dg"][-1] = value
    if marks is not None:  # the run's marks past its fresh window: folded keys too
        w["mk"] = marks
    if isinstance(value, str):  # (text of any shape is a digest as the record says)
        _read(w)
        return
    with pytest.raises(ValueError, match=r"request digest .* expected text or none"):
        _read(w)
