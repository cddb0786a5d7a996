"""A run's reply bundle uses lz4's dictionary only under 2 KB of JSON (state_replies
._PLAIN_FROM): a long run's bundle compresses ~25k instructions cheaper a write without it,
a short run's keeps the ~200 bytes it saves; either reads back the same replies."""

from __future__ import annotations

import lz4.block
import orjson
import pytest

from baton.processors import state_replies
from baton.processors.chain import link
from baton.processors.state import RunState
from tests.unit.test_engine_support import Run, completed, handoff, policy_with

pytestmark = pytest.mark.unit


def _written(steps: int) -> tuple[RunState, bytes]:
    run = Run(policy_with(shared_max_usd=50), run_id="run-d")
    for i in range(steps):
        decisions = run.send(handoff(f"r{i}", f"t{i}", "planner", "coder", run_id="run-d"), i)
        link(run.state, decisions, b"key")  # type: ignore[arg-type]
        done = run.send(completed(f"r{i}", f"t{i}", "coder", cost_usd=0.5, run_id="run-d"), i)
        link(run.state, done, b"key")  # type: ignore[arg-type]
    assert run.state is not None
    return run.state, run.state.to_bytes()


def _block(bundle: bytes) -> bytes:
    return bundle[2 + 3 * bundle[1] :]


@pytest.mark.parametrize("steps", [1, 3])
def test_a_bundle_takes_the_dictionary_only_under_2_kb_of_json(steps: int) -> None:
    state, raw = _written(steps)
    bundle = state.recent[1]
    assert type(bundle) is bytes and bundle[0] == 1 and all(b is bundle for b in state.recent[1::2])
    rec = orjson.dumps(orjson.loads(raw)["rec"])
    assert state_replies._bundle_json(bundle) == rec
    if len(rec) >= 2048:  # a long run's: plain lz4
        assert steps == 3
        assert lz4.block.decompress(_block(bundle)) == rec
    else:  # a short run's: lz4 with the dictionary (plain lz4 cannot read it)
        assert steps == 1
        with pytest.raises(lz4.block.LZ4BlockError):
            lz4.block.decompress(_block(bundle))
    # the same record again, and the same replies, from either
    back = RunState.from_bytes(raw)
    assert state.to_bytes() == raw == back.to_bytes()
    assert {k: state.replies(k) for k in state.recent_keys()} == {
        k: back.replies(k) for k in back.recent_keys()
    }
