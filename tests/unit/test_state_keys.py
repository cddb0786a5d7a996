"""A written run holds its dedup keys by hash, their text in its reply bundle
(processors/state_keys.py): the same records, the same answers, and a hash collision that
can refuse an event but never allow one or count a cost twice."""

from __future__ import annotations

import orjson
import pytest

from baton.processors.chain import link
from baton.processors.state import RunState
from baton.processors.state_keys import is_packed
from baton.schemas.decision import Outcome, Reason
from tests.unit.test_engine_support import Run, completed, handoff, policy_with

pytestmark = pytest.mark.unit


def _written_run(steps: int = 3) -> Run:
    """A long run (handoffs and completions linked as the worker links them), written."""
    run = Run(policy_with(shared_max_usd=50), run_id="run-k")
    for i in range(steps):
        decisions = run.send(handoff(f"r{i}", f"t{i}", "planner", "coder", run_id="run-k"), i)
        link(run.state, decisions, b"key")  # type: ignore[arg-type]
        done = run.send(completed(f"r{i}", f"t{i}", "coder", cost_usd=0.5, run_id="run-k"), i)
        link(run.state, done, b"key")  # type: ignore[arg-type]
    assert run.state is not None
    run.state.to_bytes()
    return run


def _texts(state: RunState) -> list[str]:
    held = [*state.fresh, *state.recent]
    return [k for k in held if type(k) is str]


def test_a_written_run_holds_no_key_text_and_writes_the_same_record() -> None:
    run = _written_run()
    state = run.state
    assert state is not None
    raw = state.to_bytes()
    assert is_packed(state.fresh) and is_packed(state.recent) and not _texts(state)
    assert state.keys_at is state.recent[1]
    wire = orjson.loads(raw)
    assert wire["keys"] == [f"{p}r{i}" for i in range(3) for p in ("h:", "c:")]
    assert [k for k, _ in wire["rec"]] == wire["keys"]
    # the record is what a state holding the keys as text writes, and reads back alike
    back = RunState.from_bytes(raw)
    assert not back.keys_at and back.to_bytes() == raw and back == state
    assert state.to_bytes() == raw
    assert state.seen_keys() == back.seen_keys() == wire["keys"]
    assert state.recent_keys() == wire["keys"]
    for key in wire["keys"]:
        assert state.has_seen(key) and state.digest_of(key) == back.digest_of(key)
        assert state.replies(key) == back.replies(key) is not None


def test_a_run_goes_on_from_its_hashed_keys_as_from_its_record() -> None:
    """The next events of a written run decide and write as they do from its record."""
    hashed = _written_run()
    assert hashed.state is not None
    text = Run(hashed.policy, run_id="run-k")
    text.state = RunState.from_bytes(hashed.state.to_bytes())
    text.clock = hashed.clock
    for run in (hashed, text):
        for i in range(3, 40):  # past a fold of fresh (every FRESH_LIMIT marks)
            decisions = run.send(handoff(f"r{i}", f"t{i}", "planner", "coder", run_id="run-k"), i)
            link(run.state, decisions, b"key")  # type: ignore[arg-type]
            # a redelivery between two writes is answered, not decided again
            again = run.send(handoff(f"r{i}", f"t{i}", "planner", "coder", run_id="run-k"), i)
            assert again == decisions
            if i % 3 == 0:
                assert run.state is not None
                run.state.to_bytes()
    assert hashed.state is not None and text.state is not None
    assert hashed.state.to_bytes() == text.state.to_bytes()
    # a redelivery of an old report is still never counted twice
    spent = hashed.state.spent_usd
    again = hashed.send(completed("r1", "t1", "coder", cost_usd=0.5, run_id="run-k"), 41)
    assert hashed.state.spent_usd == spent and again


def _collide(state: RunState, victim: str, key: str) -> None:
    """Make ``key``'s hash stand where ``victim``'s does (a 64-bit collision)."""
    old = hash(victim).to_bytes(8, "little", signed=True)
    new = hash(key).to_bytes(8, "little", signed=True)
    assert is_packed(state.fresh) and is_packed(state.recent)
    state.fresh = (state.fresh[0].replace(old, new), state.fresh[1])
    state.recent = (state.recent[0].replace(old, new), state.recent[1])


def test_a_handoff_whose_key_collides_is_refused_never_allowed() -> None:
    run = _written_run()
    assert run.state is not None
    _collide(run.state, "h:r0", "h:evil")
    before = run.state.handoff_count
    decision = run.one(handoff("evil", "t9", "planner", "coder", run_id="run-k"), 9)
    assert decision.outcome is Outcome.STOP and decision.reason == Reason.REQUEST_ID_REUSED
    assert run.state.handoff_count == before
    # the kept reply is found by its text only: another key's is never given out
    assert run.state.replies("h:evil") is None


def test_a_report_whose_key_collides_is_counted_once() -> None:
    run = _written_run()
    assert run.state is not None
    _collide(run.state, "c:r0", "c:evil")
    spent = run.state.spent_usd
    run.send(completed("evil", "t0", "coder", cost_usd=2.0, run_id="run-k"), 9)
    assert run.state.spent_usd == spent + 2.0
    run.send(completed("evil", "t0", "coder", cost_usd=2.0, run_id="run-k"), 10)
    assert run.state.spent_usd == spent + 2.0


def test_two_keys_of_a_run_with_one_hash_stay_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write never holds two keys by one hash (it could not tell them apart)."""
    from baton.processors import state_keys

    run = _written_run(1)
    state = run.state
    assert state is not None
    state_keys.as_text(state)
    assert state_keys.section(state) == ["h:r0", "c:r0"]
    monkeypatch.setattr(state_keys, "_hash", lambda key: 7)
    assert state_keys.section(state) is None
    raw = state.to_bytes()
    assert not state.keys_at and _texts(state) == ["h:r0", "c:r0", "h:r0", "c:r0"]
    assert RunState.from_bytes(raw).to_bytes() == raw
